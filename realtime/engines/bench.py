"""Engine benchmark: latency, throughput and accuracy of every CPU engine, in one run.

    python -m endofuse.realtime.engines.bench --model tiny|small|paper [--checkpoint CKPT] [--data DIR]

Per engine (torch eager, torch eager channels-last, torch.compile, ONNX Runtime
fp32 as the pipeline runs it, the same with ORT's thread spinning on, ONNX
Runtime INT8): p50 / p99 latency of one fused pair (batch 1), pairs/s, the
ratio to torch eager, the achieved GFLOPS (matmul + conv FLOPs of one pair /
p50) and its share of the CPU's fp32 peak, and the Dice of its masks
on validation pairs (against the ground truth, and against torch eager's masks).
All ratios come from this one run. Without a checkpoint the weights are random
(tiny uses its bundled demo weights when present): speed is then meaningful,
Dice against the ground truth is not.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from endofuse.machine import machine_line
from endofuse.realtime.engines.base import Engine

FP32_PEAK_GFLOPS = 166.0  # 2 Zen 4 cores x 16 fp32 FMA lanes x 2 flops x 2.6 GHz (see the anchors)
ENGINES = ("torch", "torch-channels-last", "torch-compile", "onnxruntime", "onnxruntime-spinning", "onnxruntime-int8")


@dataclass
class Row:
    engine: str
    p50_ms: float
    p99_ms: float
    pairs_per_s: float
    vs_torch: float
    gflops: float
    peak_fraction: float
    dice_gt: float
    dice_vs_torch: float


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """The reference's per-image Dice: (2|P∩G| + 1e-4) / (|P| + |G| + 1e-4)."""
    inter = np.logical_and(pred, target).sum()
    return float((2 * inter + 1e-4) / (pred.sum() + target.sum() + 1e-4))


def pair_flops(model: torch.nn.Module) -> float:
    """Matmul + conv FLOPs of one fused pair (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, model.img_size, model.img_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x, x)
    return float(counter.get_total_flops())


def latencies_ms(engine: Engine, wli: np.ndarray, nbi: np.ndarray, iterations: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        engine.infer(wli, nbi)
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        engine.infer(wli, nbi)
        times[i] = (time.perf_counter() - start) * 1e3
    return times


def open_engines(model, names, workdir: Path, calibration, log) -> dict[str, Engine]:
    from endofuse.realtime.engines.onnx_export import export_onnx
    from endofuse.realtime.engines.ort_engine import OnnxRuntimeEngine
    from endofuse.realtime.engines.quantize import quantize_int8
    from endofuse.realtime.engines.torch_engine import TorchEngine

    label = f"{model.name} (benchmark)"
    engines = {}
    for name in names:
        log(f"opening {name} ...")
        if name == "torch":
            engines[name] = TorchEngine(model, model_label=label, device="cpu")
        elif name == "torch-channels-last":
            engines[name] = TorchEngine(model, model_label=label, device="cpu", channels_last=True)
        elif name == "torch-compile":
            engines[name] = TorchEngine(model, model_label=label, device="cpu", compile=True)
        elif name.startswith("onnxruntime"):
            fp32 = workdir / "model.onnx"
            if not fp32.is_file():
                export_onnx(model, fp32, model_label=label, log=log)
            if name == "onnxruntime-int8":
                engines[name] = OnnxRuntimeEngine(quantize_int8(fp32, workdir / "model.int8.onnx", calibration, log=log))
            else:  # the pipeline's setting (spinning off), and the engine alone at its fastest
                engines[name] = OnnxRuntimeEngine(fp32, spinning=name == "onnxruntime-spinning")
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

    from endofuse.realtime.engines.frames import calibration_pairs, preprocess_pair, validation_pairs

    model = load_benchmark_model(args.model, args.checkpoint, log)
    size = (model.img_size, model.img_size)
    flops = pair_flops(model)
    log(machine_line())
    log(f"model {model.name} at {size[0]}x{size[1]}: {flops / 1e9:.2f} GFLOPs per pair; torch threads "
        f"{torch.get_num_threads()}")
    calibration = [preprocess_pair(p, size) for p in calibration_pairs(args.data, args.calibration_pairs)]
    validation = []
    for pair in validation_pairs(args.data, args.validation_pairs):
        truth = None if pair.mask is None else cv2.resize(pair.mask, size[::-1], interpolation=cv2.INTER_NEAREST) > 0
        validation.append((preprocess_pair(pair, size), truth))
    wli, nbi = validation[0][0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="endofuse-bench-") as tmp:
        engines = open_engines(model, args.engines, Path(tmp), calibration, log)
        torch_masks = None
        for name, engine in engines.items():
            times = latencies_ms(engine, wli, nbi, args.iterations, args.warmup)
            dice_gt, masks = score(engine, validation)
            if torch_masks is None:
                torch_masks = masks
            p50 = float(np.percentile(times, 50))
            rows.append(Row(name, p50, float(np.percentile(times, 99)), 1e3 / times.mean(), 0.0,
                            flops / p50 / 1e6, flops / p50 / 1e6 / args.peak_gflops, dice_gt,
                            float(np.mean([dice(a, b) for a, b in zip(masks, torch_masks)]))))
            log(f"{name}: p50 {p50:.2f} ms")
    base = next((r.p50_ms for r in rows if r.engine == "torch"), rows[0].p50_ms)
    for row in rows:
        row.vs_torch = base / row.p50_ms
    return rows


def load_benchmark_model(name: str, checkpoint: str | None, log):
    from endofuse.model import build_model, demo_checkpoint_path, load_checkpoint
    from endofuse.errors import EndofuseError

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


def markdown(rows: list[Row]) -> str:
    lines = ["| engine | p50 ms | p99 ms | pairs/s | x torch eager | GFLOPS | % fp32 peak | Dice (GT) | Dice vs torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.engine} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.pairs_per_s:.1f} | {r.vs_torch:.2f} | "
                     f"{r.gflops:.1f} | {100 * r.peak_fraction:.0f} % | {r.dice_gt:.4f} | {r.dice_vs_torch:.4f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m endofuse.realtime.engines.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=("tiny", "small", "paper"))
    parser.add_argument("--checkpoint", default=None, help="weights to use (default: demo weights for tiny, else random)")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder for calibration and Dice (default: synthetic)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--calibration-pairs", type=int, default=32)
    parser.add_argument("--validation-pairs", type=int, default=16)
    parser.add_argument("--peak-gflops", type=float, default=FP32_PEAK_GFLOPS,
                        help="this CPU's fp32 peak for the %% column (default: the anchors' 2 Zen-4 cores, 166)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run(args)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
