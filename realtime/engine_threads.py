"""How many threads a CPU engine gets beside the live pipeline's own stages.

The pipeline's CPU stages (preprocess of both frames, mask, blend, HUD) cost a
few CPU-ms per pair and run on their own threads at the same time as the
engine. An engine that uses every core then competes with them, and a small
model gains little from its second thread (its layers are too short to split
well), so on a 2-core machine the tiny model runs the pipeline faster on one
engine thread than on two; a large model gains nearly 2x and wants them all.
`fit_engine_threads` measures the open engine with all its threads and with
one core fewer and keeps the count with the higher predicted pipeline rate:

    all threads n:  pairs/s ~ cores / (n * t_n + s)                (CPU-bound)
    n - 1 threads:  pairs/s ~ min(1 / t_(n-1), cores / ((n - 1) * t_(n-1) + s))

with t the engine's median time per pair and s = STAGE_CPU_MS. Only the
OpenVINO engine is fitted (it can recompile for a thread count in place);
`endofuse run/bench --threads N` skips the fit.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

# CPU-ms per pair of the pipeline's own stages at about SD size (benchmarks/pipeline_stages.py: ~2-4 ms
# on the bench's 540x480 frames, more on full-HD ones).
STAGE_CPU_MS = 3.5
PROBE_PAIRS = 7
SLOW_ENGINE_MS = 100.0  # beyond this per pair with all threads the stages are a few % of the work: no probe


def engine_pair_ms(engine, pairs: int = PROBE_PAIRS) -> float:
    """Median wall ms of one fused pair (after one call that is not counted)."""
    zeros = np.zeros((1, 3, *engine.input_size), np.float32)
    engine.infer(zeros, zeros)
    times = []
    for _ in range(pairs):
        started = time.perf_counter()
        engine.infer(zeros, zeros)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def predicted_rate(threads: int, pair_ms: float, cores: int, stage_ms: float = STAGE_CPU_MS) -> float:
    """Pairs/s the pipeline can reach with the engine on `threads` threads taking `pair_ms` per pair."""
    cpu_bound = cores * 1000.0 / (threads * pair_ms + stage_ms)
    return cpu_bound if threads >= cores else min(1000.0 / pair_ms, cpu_bound)


def fit_engine_threads(engine, stage_ms: float = STAGE_CPU_MS, *, cores: int | None = None,
                       measure: Callable[[object], float] = engine_pair_ms) -> dict:
    """Set the engine's threads for the live pipeline (see the module docstring); returns the decision.

    `cores` defaults to the physical cores; `measure(engine)` is the ms per pair at its current threads.
    """
    from endofuse.realtime.engines.ort_engine import physical_cores

    threads = getattr(engine, "threads", None)
    if not hasattr(engine, "set_threads") or not threads or threads < 2:
        return {"threads": threads, "chosen_by": "engine default"}
    cores = cores or physical_cores()
    full_ms = measure(engine)
    decision = {"threads": threads, "chosen_by": "fit", "pair_ms": {threads: full_ms}}
    if full_ms > SLOW_ENGINE_MS:
        return decision
    engine.set_threads(threads - 1)
    fewer_ms = measure(engine)
    decision["pair_ms"][threads - 1] = fewer_ms
    if predicted_rate(threads - 1, fewer_ms, cores, stage_ms) > predicted_rate(threads, full_ms, cores, stage_ms):
        decision["threads"] = threads - 1
    else:
        engine.set_threads(threads)
    return decision
