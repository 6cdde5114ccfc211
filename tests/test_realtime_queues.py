"""Bounded queues under a slow consumer, and the percentile/latency bookkeeping."""
import threading
import time

import numpy as np
import pytest

from endofuse.realtime.queues import BLOCK, LATEST, Closed, FrameQueue, Timeout
from endofuse.realtime.tracing import FrameTrace, LatencyStats, percentiles


def produce(queue: FrameQueue, count: int, period_s: float = 0.0) -> list[float]:
    """Put 0..count-1, recording how long each put took."""
    waits = []
    for i in range(count):
        started = time.perf_counter()
        queue.put(i)
        waits.append(time.perf_counter() - started)
        if period_s:
            time.sleep(period_s)
    queue.close()
    return waits


def consume(queue: FrameQueue, delay_s: float) -> list[int]:
    got = []
    while True:
        try:
            got.append(queue.get())
        except Closed:
            return got
        time.sleep(delay_s)


def run_pair(queue: FrameQueue, count: int, produce_period: float, consume_delay: float):
    result = {}
    consumer = threading.Thread(target=lambda: result.setdefault("got", consume(queue, consume_delay)))
    consumer.start()
    waits = produce(queue, count, produce_period)
    consumer.join(10)
    return waits, result["got"]


def test_latest_policy_never_blocks_a_fast_producer_and_counts_every_drop():
    queue = FrameQueue(1, LATEST, "live")
    waits, got = run_pair(queue, 60, produce_period=0.001, consume_delay=0.01)
    assert max(waits) < 0.005  # the producer (a camera) never waits for the consumer
    assert got == sorted(got) and len(got) < 60  # in order, some frames dropped ...
    assert queue.dropped == 60 - len(got)  # ... and every drop counted
    assert got[-1] == 59  # the newest frame always gets through


def test_latest_policy_evicts_the_oldest():
    queue = FrameQueue(2, LATEST)
    for i in range(5):
        queue.put(i)
    assert (queue.get(), queue.get(), queue.dropped) == (3, 4, 3)


def test_block_policy_loses_nothing_under_a_slow_consumer():
    queue = FrameQueue(2, BLOCK, "file")
    waits, got = run_pair(queue, 30, produce_period=0.0, consume_delay=0.003)
    assert got == list(range(30)) and queue.dropped == 0
    assert max(waits) > 0.001  # the producer was held back instead


def test_close_drains_then_raises_closed():
    queue = FrameQueue(3, BLOCK)
    queue.put("a")
    queue.close()
    assert queue.get() == "a"
    with pytest.raises(Closed):
        queue.get()
    assert queue.put("b") is False


def test_close_wakes_a_blocked_producer():
    queue = FrameQueue(1, BLOCK)
    queue.put(0)
    outcome = {}
    producer = threading.Thread(target=lambda: outcome.setdefault("put", queue.put(1)))
    producer.start()
    time.sleep(0.05)
    queue.close()
    producer.join(2)
    assert outcome == {"put": False}


def test_get_times_out_and_nowait_returns_none():
    queue = FrameQueue(1, LATEST)
    with pytest.raises(Timeout):
        queue.get(timeout=0.01)
    assert queue.get_nowait() is None


@pytest.mark.parametrize("capacity, policy", [(0, LATEST), (1, "drop-newest")])
def test_bad_queue_settings_are_refused(capacity, policy):
    with pytest.raises(ValueError, match="queue"):
        FrameQueue(capacity, policy)


def test_percentiles_match_numpy_and_handle_empty():
    values = np.random.default_rng(1).exponential(10, 1000)
    p = percentiles(values)
    assert p["p50"] == pytest.approx(np.median(values))
    assert p["p999"] == pytest.approx(np.quantile(values, 0.999))
    assert p["max"] == values.max() and p["mean"] == pytest.approx(values.mean())
    assert all(np.isnan(v) for v in percentiles([]).values())


def test_latency_stats_skip_warmup_and_measure_fps():
    stats = LatencyStats(warmup=3)
    for i in range(13):
        stats.record(100.0 if i < 3 else 5.0, {"infer": 1.0}, done_time=i * 0.1)
    summary = stats.summary()
    assert stats.counted == 10
    assert summary["latency_ms"]["max"] == 5.0  # the slow warm-up frames are not counted
    assert summary["fps"] == pytest.approx(10.0)
    assert summary["stages_ms"]["infer"]["p50"] == 1.0


def test_frame_trace_accumulates_stages():
    trace = FrameTrace(capture_time=10.0)
    trace.add("queue", 10.0, 10.002)
    trace.add("queue", 10.005, 10.006)
    assert trace.stages_ms["queue"] == pytest.approx(3.0)
    assert trace.latency_ms(at=10.020) == pytest.approx(20.0)
