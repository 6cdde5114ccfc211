"""Engines: latency, throughput and accuracy of every CPU engine, in one run.

    python benchmarks/engines.py --model tiny|small|paper [--checkpoint CKPT] [--data DIR] [--json OUT]

Per engine (torch eager, torch eager channels-last, torch.compile, ONNX Runtime
fp32 as the pipeline runs it, the same with ORT's thread spinning on, ONNX
Runtime INT8, OpenVINO f32 / bf16 / INT8): p50 / p99 latency of one fused pair
(batch 1), pairs/s, the ratios to torch eager and to ONNX Runtime fp32, the
achieved GFLOPS (matmul + conv FLOPs of one pair / p50) and its share of the
CPU's fp32 peak, and the Dice of its masks on validation pairs (against the
ground truth, and against torch eager's masks).
Every engine is opened with the product's `open_engine` (its ONNX export,
cache, INT8 calibration and session options). The engines are timed in turn,
one call each per round, so all ratios come from this one run under the same
load. Without a checkpoint the weights are random (tiny uses its bundled demo
weights when present): speed is then meaningful, Dice against the ground truth
is not.
"""
from __future__ import annotations

import argparse
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from endofuse.machine import time_calls
from endofuse.model.flops import pair_flops
from endofuse.model.metrics import overlap_metrics
from endofuse.realtime.engines import Engine, open_engine

from _common import add_json_argument, record, report, table

FP32_PEAK_GFLOPS = 166.0  # 2 Zen 4 cores x 16 fp32 FMA lanes x 2 flops x 2.6 GHz (see the anchors)
ENGINES = ("torch", "torch-channels-last", "torch-compile", "onnxruntime", "onnxruntime-spinning", "onnxruntime-int8",
           "openvino-f32", "openvino-bf16", "openvino-int8")


@dataclass
class Row:
    engine: str
    p50_ms: float
    p99_ms: float
    pairs_per_s: float
    vs_torch: float
    vs_ort: float
    gflops: float
    peak_fraction: float
    dice_gt: float
    dice_vs_torch: float


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """The reference's per-image Dice, as `endofuse evaluate` and training validation compute it."""
    return overlap_metrics(pred, target)["dice"]


def interleaved_latencies_ms(engines: dict[str, Engine], wli: np.ndarray, nbi: np.ndarray, iterations: int,
                             warmup: int) -> dict[str, np.ndarray]:
    """Per-call milliseconds of each engine, timed in turn round after round.

    Interleaving makes a load change on a shared machine hit every engine alike,
    so the ratios between them stay meaningful.
    """
    calls = {name: (lambda e=engine: e.infer(wli, nbi)) for name, engine in engines.items()}
    for call in calls.values():
        time_calls(call, 0, warmup)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iterations):
        for name, call in calls.items():
            samples[name] += time_calls(call, 1)
    return {name: np.asarray(values) for name, values in samples.items()}


# bench row name -> open_engine arguments
ENGINE_OPTIONS = {
    "torch": {"backend": "torch"},
    "torch-channels-last": {"backend": "torch", "channels_last": True},
    "torch-compile": {"backend": "torch", "compile": True},
    "onnxruntime": {"backend": "onnxruntime"},  # the pipeline's setting (spinning off)
    "onnxruntime-spinning": {"backend": "onnxruntime", "spinning": True},  # the engine alone at its fastest
    "onnxruntime-int8": {"backend": "onnxruntime-int8"},
    # On a CPU without bf16 units OpenVINO runs "bf16" in f32; the log line names what each engine ran.
    "openvino-f32": {"backend": "openvino", "precision": "f32"},
    "openvino-bf16": {"backend": "openvino", "precision": "bf16"},
    "openvino-int8": {"backend": "openvino-int8"},  # NNCF, calibrated on --data's training frames (else synthetic)
}


def open_engines(model, names, log, calibration=None) -> dict[str, Engine]:
    engines = {}
    for name in names:
        log(f"opening {name} ...")
        options = dict(ENGINE_OPTIONS[name])
        if options["backend"] == "openvino-int8":
            options["calibration"] = calibration
        engines[name] = open_engine(model, device="cpu", **options)
        if engines[name].name != name and name.startswith("openvino"):
            log(f"{name} runs as {engines[name].name} on this CPU")
    return engines


def score(engine: Engine, validation, reference_masks=None) -> tuple[float, list[np.ndarray]]:
    """(mean Dice against the ground truth, predicted masks) over preprocessed validation pairs."""
    masks, scores = [], []
    for (wli, nbi), truth in validation:
        pred = np.asarray(engine.infer(wli, nbi)).argmax(1)[0] > 0
        masks.append(pred)
        if truth is not None:
            scores.append(dice(pred, truth))
    return (float(np.mean(scores)) if scores else float("nan")), masks


def run(args: argparse.Namespace, log=print) -> list[Row]:
    import cv2

    from endofuse.realtime.engines.calibration import preprocess_pair, validation_pairs

    model = load_benchmark_model(args.model, args.checkpoint, log)
    size = (model.img_size, model.img_size)
    flops = pair_flops(model)
    log(f"model {model.name} at {size[0]}x{size[1]}: {flops / 1e9:.2f} GFLOPs per pair; torch threads "
        f"{torch.get_num_threads()}")
    validation = []
    for pair in validation_pairs(args.data, args.validation_pairs):
        truth = None if pair.mask is None else cv2.resize(pair.mask, size[::-1], interpolation=cv2.INTER_NEAREST) > 0
        validation.append((preprocess_pair(pair, size), truth))
    wli, nbi = validation[0][0]
    rows: list[Row] = []
    engines = open_engines(model, args.engines, log, calibration=args.data)
    torch_masks = None
    timings = interleaved_latencies_ms(engines, wli, nbi, args.iterations, args.warmup)
    for name, engine in engines.items():
        times = timings[name]
        dice_gt, masks = score(engine, validation)
        if torch_masks is None:
            torch_masks = masks
        p50 = float(np.percentile(times, 50))
        rows.append(Row(name, p50, float(np.percentile(times, 99)), 1e3 / times.mean(), 0.0, 0.0,
                        flops / p50 / 1e6, flops / p50 / 1e6 / args.peak_gflops, dice_gt,
                        float(np.mean([dice(a, b) for a, b in zip(masks, torch_masks, strict=True)]))))
        log(f"{name}: p50 {p50:.2f} ms")
    base = next((r.p50_ms for r in rows if r.engine == "torch"), rows[0].p50_ms)
    ort = next((r.p50_ms for r in rows if r.engine == "onnxruntime"), float("nan"))
    for row in rows:
        row.vs_torch = base / row.p50_ms
        row.vs_ort = ort / row.p50_ms
    return rows


def load_benchmark_model(name: str, checkpoint: str | None, log):
    from endofuse.errors import EndofuseError
    from endofuse.model import build_model, demo_checkpoint_path, load_checkpoint

    if checkpoint:
        return load_checkpoint(checkpoint).eval()
    if name == "tiny":
        try:
            return load_checkpoint(demo_checkpoint_path()).eval()
        except EndofuseError:
            pass
    log(f"no checkpoint: {name} with random weights (Dice against the ground truth is meaningless)")
    torch.manual_seed(0)
    return build_model(name).eval()


COLUMNS = ["engine", "p50 ms", "p99 ms", "pairs/s", "x torch eager", "x ORT fp32", "GFLOPS", "% fp32 peak", "Dice (GT)",
           "Dice vs torch"]


def table_rows(rows: list[Row]) -> list[list]:
    return [[*astuple(r)[:7], 100 * r.peak_fraction, r.dice_gt, r.dice_vs_torch] for r in rows]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=("tiny", "small", "paper"))
    parser.add_argument("--checkpoint", default=None,
                        help="weights to use (default: demo weights for tiny, else random)")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset folder for the Dice columns (default: synthetic)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--validation-pairs", type=int, default=16)
    parser.add_argument("--peak-gflops", type=float, default=FP32_PEAK_GFLOPS,
                        help="this CPU's fp32 peak for the %% column (default: the anchors' 2 Zen-4 cores, 166)")
    add_json_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run(args)
    note = (f"% fp32 peak against {args.peak_gflops:g} GFLOPS (--peak-gflops). Without --checkpoint the weights are "
            "the bundled demo weights (tiny) or random, so Dice (GT) is only meaningful with a trained checkpoint.")
    tab = table(f"{args.model}, batch 1, {args.iterations} interleaved rounds after {args.warmup} warm-up calls",
                COLUMNS, table_rows(rows), note)
    report(record("engines", "Engines: latency, throughput and accuracy", [tab], argv,
                  details={"rows": [{f.name: getattr(r, f.name) for f in fields(r)} for r in rows]}), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
