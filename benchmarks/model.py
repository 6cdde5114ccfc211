"""Model configs: parameters, GFLOPs per pair, CPU latency (torch eager and ONNX Runtime).

    python benchmarks/model.py --models tiny small paper --threads 2 --json benchmarks/results/model.json

GFLOPs come from `endofuse.model.flops.pair_flops` on one WLI/NBI pair
(matmuls and convs, 2 flops per multiply-add). Both engines are the product's
own (`open_engine`: the torch engine, and ONNX Runtime on the cached export with
the pipeline's session options). Latencies are single-pair medians over `--runs`
after `--warmup`, all in one process: the single-thread CPU time (robust to
other load on the machine) and the wall time with `--threads`. The paper model
(218.5 M parameters) gets at most 3 timed runs and no ONNX export.
"""
from __future__ import annotations

import argparse
import ast
import statistics
import time

import numpy as np
import torch

from endofuse.machine import time_calls
from endofuse.model import build_model, count_parameters, list_models
from endofuse.model.flops import pair_flops
from endofuse.realtime.engines import open_engine

from _common import add_json_argument, record, report, table


def latencies(engine, threads: int, warmup: int, runs: int, set_torch_threads: bool) -> tuple[float, float]:
    """(single-thread CPU ms, wall ms with `threads`) medians of one pair through `engine.infer`.

    For ONNX Runtime the thread count is the session's, so `engine` is a pair
    (1-thread engine, N-thread engine); for torch it is set per call.
    """
    single, multi = engine
    size = single.input_size
    x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)

    def run_with(eng, n: int):
        def run():
            if set_torch_threads:
                torch.set_num_threads(n)
            eng.infer(x, x)

        return run

    try:
        one = statistics.median(time_calls(run_with(single, 1), runs, warmup, clock=time.thread_time))
        many = statistics.median(time_calls(run_with(multi, threads), runs, warmup))
    finally:
        torch.set_num_threads(threads)
    return one, many


def _parse_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for all models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime columns")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = dict(_parse_override(t) for t in args.set)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, **overrides).eval()
        # the paper model takes seconds per pair on CPU: few timed runs, no ONNX export
        slow = name == "paper"
        runs, warmup = (min(args.runs, 3), 1) if slow else (args.runs, args.warmup)
        eager_engine = open_engine(model, backend="torch", device="cpu")
        eager = latencies((eager_engine, eager_engine), args.threads, warmup, runs, set_torch_threads=True)
        ort_cells = [None, None, None]
        if not (args.no_ort or slow):
            pair = (open_engine(model, backend="onnxruntime", device="cpu", threads=1),
                    open_engine(model, backend="onnxruntime", device="cpu", threads=args.threads))
            ort = latencies(pair, args.threads, warmup, runs, set_torch_threads=False)
            ort_cells = [ort[0], ort[1], 1000 / ort[1]]
        rows.append([name, model.img_size, count_parameters(model) / 1e6, pair_flops(model) / 1e9,
                     eager[0], eager[1], *ort_cells])
        print(f"{name}: done", flush=True)
    columns = ["config", "input", "params (M)", "GFLOPs / pair", "eager 1-thread CPU ms",
               f"eager wall ms ({args.threads} thr)", "ORT 1-thread CPU ms", f"ORT wall ms ({args.threads} thr)",
               "ORT pairs/s"]
    tab = table(f"single pair, batch 1, medians of {args.runs} runs (paper: at most 3), torch threads {args.threads}",
                columns, rows)
    report(record("model", "Model configs: size, FLOPs and CPU latency", [tab], argv), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
