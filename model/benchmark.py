"""Print the config table: parameters, GFLOPs per pair, CPU latency (eager and ONNX Runtime).

    python -m endofuse.model.benchmark --models tiny small paper --threads 2

GFLOPs come from `torch.utils.flop_counter.FlopCounterMode` on one WLI/NBI pair
(matmuls and convs, 2 flops per multiply-add). Latencies are single-pair medians
over `--runs` after `--warmup`, all in one process: the single-thread CPU time
(robust to other load on the machine) and the wall time with `--threads`.
The paper model gets 3 timed runs and no ONNX export (218.5 M parameters).
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
    # two distinct tensors: passing one tensor twice lets the exporter alias both inputs
    wli, nbi = torch.rand(1, 3, size, size), torch.rand(1, 3, size, size)
    module, args = (_WliOnly(model), (wli,)) if wli_only else (model, (wli, nbi))
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


def _time_ms(run, warmup: int, runs: int, clock=time.perf_counter) -> float:
    """Median milliseconds of `run()` on `clock` after `warmup` calls."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(runs):
        start = clock()
        run()
        samples.append((clock() - start) * 1000)
    return statistics.median(samples)


def _latencies(run_1thread, run_nthreads, warmup: int, runs: int) -> tuple[float, float]:
    """(single-thread CPU time, wall time with N threads), both medians in ms.

    The CPU time of a single-threaded run (`time.thread_time`) barely moves when
    other processes share the cores, so it is the number to compare across runs
    on a busy machine; the wall time is what a user sees on an idle one.
    """
    return _time_ms(run_1thread, warmup, runs, time.thread_time), _time_ms(run_nthreads, warmup, runs)


def eager_latency(model: torch.nn.Module, threads: int, warmup: int, runs: int) -> tuple[float, float]:
    x = torch.rand(1, 3, model.img_size, model.img_size)

    def run_with(n: int):
        def run():
            torch.set_num_threads(n)
            with torch.no_grad():
                model(x, x)

        return run

    try:
        return _latencies(run_with(1), run_with(threads), warmup, runs)
    finally:
        torch.set_num_threads(threads)


def ort_latency(model: torch.nn.Module, threads: int, warmup: int, runs: int) -> tuple[float, float]:
    import onnxruntime as ort

    def session(n: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = n, 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        single, multi = session(1), session(threads)
    x = torch.rand(1, 3, model.img_size, model.img_size).numpy()
    feeds = {inp.name: x for inp in single.get_inputs()}
    return _latencies(lambda: single.run(None, feeds), lambda: multi.run(None, feeds), warmup, runs)


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
    print(f"threads={args.threads} torch={torch.__version__} runs={args.runs} (single pair, batch 1, medians)")
    print(
        "| config | input | params (M) | GFLOPs / pair | eager 1-thread CPU ms | eager wall ms "
        f"({args.threads} thr) | ORT 1-thread CPU ms | ORT wall ms ({args.threads} thr) | ORT pairs/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, **overrides).eval()
        # the paper model takes seconds per pair on CPU: few timed runs, no ONNX export
        slow = name == "paper"
        runs, warmup = (min(args.runs, 3), 1) if slow else (args.runs, args.warmup)
        eager = eager_latency(model, args.threads, warmup, runs)
        ort_cells = ["-", "-", "-"]
        if not (args.no_ort or slow):
            ort = ort_latency(model, args.threads, warmup, runs)
            ort_cells = [f"{ort[0]:.1f}", f"{ort[1]:.1f}", f"{1000 / ort[1]:.1f}"]
        print(
            f"| {name} | {model.img_size} | {count_parameters(model) / 1e6:.2f} | {gflops_per_pair(model):.2f} "
            f"| {eager[0]:.1f} | {eager[1]:.1f} | {' | '.join(ort_cells)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
