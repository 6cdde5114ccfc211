"""Engine threads beside the live pipeline: the predicted rates and the decision, with set latencies."""
from __future__ import annotations

import pytest

from endofuse.realtime.engine_threads import STAGE_CPU_MS, fit_engine_threads, predicted_rate


class ThreadedEngine:
    """An engine whose ms per pair depends only on its thread count (what `measure` reports)."""

    def __init__(self, ms_by_threads: dict[int, float], threads: int = 2) -> None:
        self.ms_by_threads, self.threads, self.changes = ms_by_threads, threads, []

    def set_threads(self, threads: int) -> None:
        self.changes.append(threads)
        self.threads = threads


def measure(engine) -> float:
    return engine.ms_by_threads[engine.threads]


def test_predicted_rates_by_hand():
    # 2 threads on 2 cores, 5 ms: 2 cores * 1000 / (2 * 5 + 3.5) CPU-ms per pair
    assert predicted_rate(2, 5.0, 2, 3.5) == pytest.approx(2000 / 13.5)
    # 1 thread, 5.5 ms: the engine thread itself is the limit (1000 / 5.5 < 2000 / 9)
    assert predicted_rate(1, 5.5, 2, 3.5) == pytest.approx(1000 / 5.5)
    # 1 thread with heavy stages: the cores are the limit (2000 / 15 < 1000 / 5)
    assert predicted_rate(1, 5.0, 2, 10.0) == pytest.approx(2000 / 15)


def test_a_small_model_that_barely_gains_from_a_second_thread_gets_one():
    engine = ThreadedEngine({2: 4.9, 1: 5.5})
    decision = fit_engine_threads(engine, cores=2, measure=measure)
    assert engine.threads == 1 and decision["threads"] == 1
    assert decision["pair_ms"] == {2: 4.9, 1: 5.5}


def test_a_model_that_scales_keeps_every_thread():
    engine = ThreadedEngine({2: 11.7, 1: 22.0})
    decision = fit_engine_threads(engine, cores=2, measure=measure)
    assert engine.threads == 2 and decision["threads"] == 2 and engine.changes == [1, 2]


def test_a_slow_engine_is_not_probed():
    engine = ThreadedEngine({2: 114.0, 1: 228.0})
    assert fit_engine_threads(engine, cores=2, measure=measure)["threads"] == 2 and engine.changes == []


def test_engines_without_a_thread_setting_are_left_alone():
    class Plain:
        threads = 4

    assert fit_engine_threads(Plain(), STAGE_CPU_MS, cores=4, measure=measure) == {"threads": 4,
                                                                                  "chosen_by": "engine default"}
    one = ThreadedEngine({1: 3.0}, threads=1)
    assert fit_engine_threads(one, cores=2, measure=measure)["threads"] == 1 and one.changes == []
