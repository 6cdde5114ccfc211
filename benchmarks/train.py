"""Training: an ablation over seeds and two synthetic splits, throughput and 2-rank scaling.

    python benchmarks/train.py [--pairs 64] [--epochs 8] [--img-size 96] [--seeds 3] [--splits standard,shift]
                               [--variants full,dmaf,...] [--out bench_runs] [--json OUT]

1. Writes synthetic datasets (`endofuse synth`; `shift`: `synth --shift`, whose
   test scenes differ in colour calibration, blur and WLI/NBI misregistration),
   trains `tiny` once per variant and seed: today's terms (full; without da / fd /
   dacl; without NBI) and the related-work options (dmaf; dmaf with relation and
   prototype distillation and DTM; cgns = cluster-guided negatives; mir; all of
   them; on request, dmaf with both distillation terms without DTM or with one
   term alone). Prints, per split, mean +- std over the seeds of the best validation
   Dice, the native-resolution Dice of each best.pt on Test.csv, the native Dice
   of the same model without NBI (missing-NBI robustness) and train pairs/s.
2. Runs the same short training single-process and under
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
from endofuse.model.synthetic import DomainShift
from endofuse.train.evaluate import evaluate_model
from endofuse.train.methods import MethodOptions
from endofuse.train.synth_command import write_dataset
from endofuse.train.trainer import TrainOptions, train

from _common import add_json_argument, record, report, table

DISTILL = ("prototype", "relation")
# name -> (--ablate, related-work options)
VARIANTS = {
    "full": ((), MethodOptions()),
    "no-da": (("da",), MethodOptions()),
    "no-fd": (("fd",), MethodOptions()),
    "no-dacl": (("dacl",), MethodOptions()),
    "no-nbi": (("nbi",), MethodOptions()),
    "dmaf": ((), MethodOptions(fusion="dmaf")),
    "dmaf+distill": ((), MethodOptions(fusion="dmaf", distill=DISTILL)),
    "dmaf+relation": ((), MethodOptions(fusion="dmaf", distill=("relation",))),
    "dmaf+prototype": ((), MethodOptions(fusion="dmaf", distill=("prototype",))),
    "dmaf+distill+dtm": ((), MethodOptions(fusion="dmaf", distill=DISTILL, dtm=True)),
    "cgns": ((), MethodOptions(negatives="cluster")),
    "mir": ((), MethodOptions(mir=True)),
    "all": ((), MethodOptions(fusion="dmaf", negatives="cluster", mir=True, distill=DISTILL, dtm=True)),
}
# run when --variants is not given; the single-term and no-DTM distillation variants only on request
DEFAULT_VARIANTS = [name for name in VARIANTS if name not in ("dmaf+distill", "dmaf+relation", "dmaf+prototype")]
SPLITS = {"standard": None, "shift": DomainShift()}
TARGET_DICE = 0.85


def read_log(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return [{k: float(v) if v != "" else None for k, v in row.items()} for row in csv.DictReader(f)]


def time_to_dice(rows: list[dict], target: float) -> float | None:
    """Training seconds (validation excluded) until the first epoch with val Dice >= target."""
    elapsed = 0.0
    for row in rows:
        elapsed += row["seconds"]
        if row["val_dice"] >= target:
            return elapsed
    return None


def run_variant(args, data: Path, split: str, name: str, seed: int) -> dict:
    ablate, methods = VARIANTS[name]
    run = args.out / "runs" / split / f"{name}-seed{seed}"
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    train(TrainOptions(data=data, out=run, model=args.model, epochs=args.epochs, recipe=args.recipe,
                       img_size=args.img_size, ablate=ablate, progress=False, batch_size=args.batch_size,
                       seed=seed, methods=methods))
    wall = time.perf_counter() - started
    rows = read_log(run)
    records = load_split(data, "test")
    model = load_checkpoint(run / "best.pt")
    wli_only = "nbi" in ablate
    metrics = evaluate_model(model, records, wli_only=wli_only, progress=False)
    # the same fused model with its NBI input missing (no-nbi is WLI-only already)
    missing = metrics if wli_only else evaluate_model(model, records, wli_only=True, progress=False)
    return {"split": split, "name": name, "seed": seed, "best": max(r["val_dice"] for r in rows),
            "final": rows[-1]["val_dice"], "native_dice": metrics["native"]["dice"],
            "native_dice_wli_only": missing["native"]["dice"], "native_hd95": metrics["native"]["hd95"],
            "to_target": time_to_dice(rows, TARGET_DICE), "wall": wall,
            "pairs_per_s": statistics.median(r["pairs_per_s"] for r in rows[1:] or rows)}


def mean_std(values: list[float]) -> list[float | None]:
    """[mean, sample std] (std None for one value)."""
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None]


def summary_rows(results: list[dict], split: str, names: list[str]) -> list[list]:
    rows = []
    for name in names:
        runs = [r for r in results if r["split"] == split and r["name"] == name]
        if not runs:
            continue
        cells = []
        for key in ("best", "native_dice", "native_dice_wli_only", "pairs_per_s"):
            cells += mean_std([r[key] for r in runs])
        rows.append([name, len(runs), *cells])
    return rows


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
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma list of: " + ",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per variant (1234, 1235, ...)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma list of: " + ",".join(SPLITS))
    parser.add_argument("--scaling-epochs", type=int, default=3)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_runs"))
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(VARIANTS)) + sorted(set(splits) - set(SPLITS))
    if unknown:
        parser.error(f"unknown variant(s)/split(s) {unknown}")
    seeds = [1234 + i for i in range(args.seeds)]
    setup = (f"{args.model} at {args.img_size}px, {args.pairs} train / {args.test_pairs} test synthetic pairs, "
             f"{args.epochs} epochs, recipe {args.recipe}, seeds {seeds[0]}..{seeds[-1]}, "
             f"torch threads {torch.get_num_threads()}")
    print(f"# {setup}", flush=True)
    results = []
    for split in splits:
        data = args.out / f"data-{split}"
        if not (data / "Test.csv").is_file():
            write_dataset(data, args.pairs, args.test_pairs, (288, 320), seed=0, progress=False, shift=SPLITS[split])
        for seed in seeds:
            for name in wanted:
                results.append(run_variant(args, data, split, name, seed))
                r = results[-1]
                print(f"{split} {name} seed {seed}: best val Dice {r['best']:.4f}, native Dice "
                      f"{r['native_dice']:.4f} (without NBI {r['native_dice_wli_only']:.4f}), "
                      f"{r['pairs_per_s']:.1f} pairs/s", flush=True)
    columns = ["variant", "seeds", "best val Dice", "+-", "native Dice (Test.csv)", "+-",
               "native Dice, NBI missing", "+-", "train pairs/s", "+-"]
    tables = [table(f"ablation, {split} split: {setup}", columns, summary_rows(results, split, wanted),
                    note="mean and sample std over the seeds; 'NBI missing' runs the same best.pt with "
                         "model(wli, None); no-nbi is trained WLI-only."
                         + (" shift: Test.csv scenes under other colour calibration, blur and a wider "
                            "WLI/NBI misregistration (endofuse synth --shift)." if split == "shift" else ""))
              for split in splits]
    data = args.out / f"data-{splits[0]}"
    if not args.skip_scaling:
        one, two = scaling(args, data)
        tables.append(table(f"DDP scaling (gloo, 1 thread per process, {args.scaling_epochs} epochs, first skipped)",
                            ["processes", "train pairs/s", "vs 1 process"], [[1, one, 1.0], [2, two, two / one]]))
    report(record("train", "Training: ablation over seeds and splits, throughput and DDP scaling", tables, argv,
                  details={"runs": results}), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
