"""Print the config table: parameters, GFLOPs per pair, CPU latency (eager and ONNX Runtime).

    python -m endofuse.model.benchmark --models tiny small paper --threads 2

GFLOPs come from `torch.utils.flop_counter.FlopCounterMode` on one WLI/NBI pair
(matmuls and convs, 2 flops per multiply-add). Latencies are single-pair,
median and p90 over `--runs` after `--warmup`, in one process, so the rows
compare with each other; other load on the machine shifts all of them.
"""
from __future__ import annotations

import argparse
import ast
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from endofuse.model import build_model, count_parameters, list_models


class _WliOnly(torch.nn.Module):
    """The missing-NBI graph as a one-input module (what an engine exports)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, wli: torch.Tensor) -> torch.Tensor:
        return self.model(wli, None)


def export_onnx(model: torch.nn.Module, path: Path, wli_only: bool = False) -> Path:
    """torch.onnx.export(dynamo=True, opset 18) of model(wli, nbi) or model(wli, None)."""
    size = model.img_size
    example = torch.rand(1, 3, size, size)
    module, args = (_WliOnly(model), (example,)) if wli_only else (model, (example, example))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, opset_version=18, verbose=False)
    return path


def gflops_per_pair(model: torch.nn.Module) -> float:
    size = model.img_size
    x = torch.rand(1, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, x)
    return counter.get_total_flops() / 1e9


def _time_ms(run, warmup: int, runs: int) -> tuple[float, float]:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))]


def eager_latency(model: torch.nn.Module, warmup: int, runs: int) -> tuple[float, float]:
    x = torch.rand(1, 3, model.img_size, model.img_size)
    with torch.no_grad():
        return _time_ms(lambda: model(x, x), warmup, runs)


def ort_latency(model: torch.nn.Module, threads: int, warmup: int, runs: int) -> tuple[float, float]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, model.img_size, model.img_size).numpy()
    feeds = {inp.name: x for inp in session.get_inputs()}
    return _time_ms(lambda: session.run(None, feeds), warmup, runs)


def _parse_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for all models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime column")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = dict(_parse_override(t) for t in args.set)
    print(f"threads={args.threads} torch={torch.__version__} runs={args.runs} (single pair, batch 1)")
    print("| config | input | params (M) | GFLOPs / pair | eager p50 / p90 (ms) | ORT p50 / p90 (ms) | ORT pairs/s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, **overrides).eval()
        # the paper model is slow on CPU: fewer timed runs keep the table under minutes
        runs = args.runs if name != "paper" else min(args.runs, 3)
        warmup = args.warmup if name != "paper" else 1
        eager = eager_latency(model, warmup, runs)
        ort_cell, fps = "-", "-"
        if not args.no_ort:
            ort = ort_latency(model, args.threads, warmup, runs)
            ort_cell, fps = f"{ort[0]:.1f} / {ort[1]:.1f}", f"{1000 / ort[0]:.1f}"
        print(
            f"| {name} | {model.img_size} | {count_parameters(model) / 1e6:.2f} | {gflops_per_pair(model):.2f} "
            f"| {eager[0]:.1f} / {eager[1]:.1f} | {ort_cell} | {fps} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
