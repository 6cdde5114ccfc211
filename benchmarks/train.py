"""Training: a small ablation (like the paper's), throughput and 2-rank scaling.

    python benchmarks/train.py [--pairs 64] [--epochs 8] [--img-size 96] [--out bench_runs] [--json OUT]

1. Writes a synthetic dataset (`endofuse synth`), trains `tiny` once per variant
   (full; without da / fd / dacl; without NBI) and prints the validation Dice
   table (best epoch), the native-resolution Dice/HD95 of each best.pt on
   Test.csv, and the time to reach validation Dice 0.85.
2. Prints training throughput (pairs/s) of the full variant.
3. Runs the same short training single-process and under
   `torchrun --standalone --nproc_per_node=2` (one thread per process both
   times) and prints the throughput ratio, measured in this one run.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from endofuse.model import load_checkpoint
from endofuse.model.dataset import load_split
from endofuse.train.evaluate import evaluate_model
from endofuse.train.synth_command import write_dataset
from endofuse.train.trainer import TrainOptions, train

from _common import add_json_argument, record, report, table

VARIANTS = {"full": (), "no-da": ("da",), "no-fd": ("fd",), "no-dacl": ("dacl",), "no-nbi (WLI only)": ("nbi",)}
TARGET_DICE = 0.85


def read_log(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def time_to_dice(rows: list[dict], target: float) -> float | None:
    """Training seconds (validation excluded) until the first epoch with val Dice >= target."""
    elapsed = 0.0
    for row in rows:
        elapsed += row["seconds"]
        if row["val_dice"] >= target:
            return elapsed
    return None


def run_variant(args, data: Path, name: str, ablate: tuple[str, ...]) -> dict:
    run = args.out / "runs" / name.split()[0]
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    train(TrainOptions(data=data, out=run, model=args.model, epochs=args.epochs, recipe=args.recipe,
                       img_size=args.img_size, ablate=ablate, progress=False, batch_size=args.batch_size))
    wall = time.perf_counter() - started
    rows = read_log(run)
    records = load_split(data, "test")
    metrics = evaluate_model(load_checkpoint(run / "best.pt"), records, wli_only="nbi" in ablate, progress=False)
    return {"name": name, "best": max(r["val_dice"] for r in rows), "final": rows[-1]["val_dice"],
            "native_dice": metrics["native"]["dice"], "native_hd95": metrics["native"]["hd95"],
            "to_target": time_to_dice(rows, TARGET_DICE), "wall": wall,
            "pairs_per_s": statistics.median(r["pairs_per_s"] for r in rows[1:] or rows)}


def _train_cmd(data: Path, run: Path, args) -> list[str]:
    return ["-m", "endofuse", "train", "--data", str(data), "--out", str(run), "--model", args.model,
            "--epochs", str(args.scaling_epochs), "--img-size", str(args.img_size), "--no-progress",
            "--batch-size", str(args.batch_size or 8)]


def scaling(args, data: Path) -> tuple[float, float]:
    """(pairs/s with 1 process, pairs/s with 2 torchrun ranks), one thread per process, epoch 1 skipped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = []
    for ranks in (1, 2):
        run = args.out / "runs" / f"scaling-{ranks}"
        shutil.rmtree(run, ignore_errors=True)
        launcher = [sys.executable] if ranks == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        cmd = launcher + _train_cmd(data, run, args)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        rows = read_log(run)
        results.append(statistics.median(r["pairs_per_s"] for r in rows[1:] or rows))
    return results[0], results[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--test-pairs", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the ablation runs")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of: " + ",".join(VARIANTS))
    parser.add_argument("--scaling-epochs", type=int, default=3)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_runs"))
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.out / "data"
    if not (data / "Test.csv").is_file():
        write_dataset(data, args.pairs, args.test_pairs, (288, 320), seed=0, progress=False)
    setup = (f"{args.model} at {args.img_size}px, {args.pairs} train / {args.test_pairs} test synthetic pairs, "
             f"{args.epochs} epochs, recipe {args.recipe}, torch threads {torch.get_num_threads()}")
    print(f"# {setup}", flush=True)
    wanted = [v.strip() for v in args.variants.split(",")]
    results = [run_variant(args, data, name, ablate) for name, ablate in VARIANTS.items() if name.split()[0] in wanted
               or name in wanted]
    columns = ["variant", "best val Dice", "final val Dice", "native Dice (Test.csv)", "native HD95 px",
               f"s to val Dice {TARGET_DICE}", "train pairs/s", "wall s"]
    rows = [[r["name"], r["best"], r["final"], r["native_dice"], r["native_hd95"],
             r["to_target"] if r["to_target"] is not None else "not reached", r["pairs_per_s"], r["wall"]]
            for r in results]
    tables = [table(f"ablation: {setup}", columns, rows)]
    if not args.skip_scaling:
        one, two = scaling(args, data)
        tables.append(table(f"DDP scaling (gloo, 1 thread per process, {args.scaling_epochs} epochs, first skipped)",
                            ["processes", "train pairs/s", "vs 1 process"], [[1, one, 1.0], [2, two, two / one]]))
    report(record("train", "Training: ablation, throughput and DDP scaling", tables, argv), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
