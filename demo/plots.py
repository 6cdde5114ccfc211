"""The latency CDF shown after a video pair has been processed."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

MARKED_PERCENTILES = (50, 90, 99)


def latency_cdf_figure(latencies_ms, title: str = "per-frame latency") -> Figure:
    """Empirical CDF of per-frame latencies with p50/p90/p99 marked.

    Uses `Figure` directly (not pyplot): no global state, safe from Gradio's worker threads.
    """
    values = np.sort(np.asarray(list(latencies_ms), dtype=np.float64))
    if values.size == 0:
        raise ValueError("no frame latencies to plot")
    fraction = np.arange(1, values.size + 1) / values.size
    figure = Figure(figsize=(6, 3.2), dpi=100, layout="tight")
    axes = figure.add_subplot()
    axes.step(values, fraction, where="post", color="tab:blue")
    for p in MARKED_PERCENTILES:
        x = float(np.percentile(values, p))
        axes.axvline(x, color="grey", linestyle=":", linewidth=1)
        axes.annotate(f"p{p} {x:.1f} ms", (x, p / 100), textcoords="offset points", xytext=(4, -10), fontsize=8)
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("fraction of frames")
    axes.set_ylim(0, 1.02)
    axes.set_title(f"{title} ({values.size} frames)")
    axes.grid(alpha=0.3)
    return figure
