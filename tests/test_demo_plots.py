"""The video tab's latency CDF and summary, against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from endofuse.demo.plots import latency_cdf_figure
from endofuse.demo.video import summary_text


def test_cdf_steps_through_every_frame_and_marks_hand_computed_percentiles():
    values = np.arange(100, 0, -1, dtype=float)  # 100 .. 1 ms, unsorted on purpose
    axes = latency_cdf_figure(values).axes[0]
    step = axes.lines[0]
    assert np.array_equal(step.get_xdata(), np.arange(1, 101))
    assert np.allclose(step.get_ydata(), np.arange(1, 101) / 100)
    # linear interpolation over 1..100: p = 1 + 99 * q
    marked = sorted(line.get_xdata()[0] for line in axes.lines[1:])
    assert marked == pytest.approx([50.5, 90.1, 99.01])
    assert "100 frames" in axes.get_title()


def test_cdf_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no frame latencies"):
        latency_cdf_figure([])


def test_summary_reads_the_pipeline_report():
    report = {"frames": 40, "engine": "torch", "model": "tiny", "counted_frames": 30,
              "latency_ms": {"p50": 12.0, "p90": 15.5, "p99": 20.25, "max": 31.0}, "paired": 25, "stale_pairs": 3,
              "nbi_missing": 2, "fps": 29.5}
    text = summary_text(report, "overlay.webm")
    assert text.splitlines() == [
        "40 frames -> overlay.webm | engine torch | model tiny",
        "latency over 30 frames after warm-up: p50 12.0 ms, p90 15.5 ms, p99 20.2 ms, max 31.0 ms",
        "pairs: 25 fused, 3 stale, 2 without NBI (WLI-ONLY); fps 29.5",
    ]
