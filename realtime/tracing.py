"""Per-frame, per-stage latency tracing and the percentiles the reports use.

Every frame carries a `FrameTrace`: the monotonic capture time plus the time
each stage took. `LatencyStats` collects traces after `warmup` frames and
summarises them as p50/p90/p99/p99.9/max/mean per stage and end to end.
Values are stored in compact `array('d')` buffers (8 bytes a value) so a
10,000-frame run stays flat in memory.
"""
from __future__ import annotations

import math
import time
from array import array
from dataclasses import dataclass, field

import numpy as np

from endofuse.errors import InvalidOptionError

# The stage names, in pipeline order. `capture` is the source's read/decode time
# (before the capture stamp, so not part of latency); `queue` is time a frame
# waited between stages; `sync` is pairing, including a live run's bounded wait
# for a late NBI frame; `analyse` is an endoscope stream's content area + modality
# + quality gate + view signature (`run --endoscope`), before the crops'
# preprocess. Pacing waits are never counted: a paced source stamps the capture
# time when the frame is released, not when it was scheduled.
STAGES = ("capture", "analyse", "preprocess", "queue", "sync", "infer", "stabilise", "postprocess", "overlay",
          "temporal_metrics", "output")
PERCENTILE_KEYS = ("p50", "p90", "p99", "p999", "max", "mean")


def now() -> float:
    """The one clock every timestamp uses: monotonic seconds."""
    return time.monotonic()


def percentiles(values_ms) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of a sequence (linear interpolation); NaN when empty."""
    data = np.asarray(values_ms, dtype=np.float64)
    if data.size == 0:
        return {key: math.nan for key in PERCENTILE_KEYS}
    p50, p90, p99, p999 = np.percentile(data, [50.0, 90.0, 99.0, 99.9])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "p999": float(p999),
        "max": float(data.max()),
        "mean": float(data.mean()),
    }


@dataclass
class FrameTrace:
    """Timestamps of one frame: capture time plus milliseconds spent per stage."""

    capture_time: float
    stages_ms: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float, ended: float | None = None) -> float:
        """Record `stage` as lasting from `started` to `ended` (default: now); returns the end time."""
        ended = now() if ended is None else ended
        self.stages_ms[stage] = self.stages_ms.get(stage, 0.0) + (ended - started) * 1000.0
        return ended

    def latency_ms(self, at: float | None = None) -> float:
        """Capture-to-`at` (default now) in milliseconds."""
        return ((now() if at is None else at) - self.capture_time) * 1000.0


class LatencyStats:
    """Accumulates end-to-end latency and per-stage times, skipping warm-up frames."""

    def __init__(self, warmup: int = 10) -> None:
        if warmup < 0:
            raise InvalidOptionError(f"warmup must be >= 0, got {warmup}")
        self.warmup = warmup
        self.seen = 0
        self.latency = array("d")
        self.stages: dict[str, array] = {}
        self.first_time: float | None = None
        self.last_time: float | None = None

    def record(self, latency_ms: float, stages_ms: dict[str, float], done_time: float | None = None) -> None:
        self.seen += 1
        if self.seen <= self.warmup:
            return
        done_time = now() if done_time is None else done_time
        if self.first_time is None:
            self.first_time = done_time
        self.last_time = done_time
        self.latency.append(latency_ms)
        for stage, value in stages_ms.items():
            self.stages.setdefault(stage, array("d")).append(value)

    @property
    def counted(self) -> int:
        return len(self.latency)

    def fps(self) -> float:
        """Frames completed per second over the counted (post warm-up) frames."""
        if self.counted < 2 or self.last_time == self.first_time:
            return math.nan
        return (self.counted - 1) / (self.last_time - self.first_time)

    def summary(self) -> dict:
        ordered = [s for s in STAGES if s in self.stages] + sorted(set(self.stages) - set(STAGES))
        return {
            "fps": self.fps(),
            "latency_ms": percentiles(self.latency),
            "stages_ms": {stage: percentiles(self.stages[stage]) for stage in ordered},
        }
