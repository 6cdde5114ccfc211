"""`endofuse bench --plot`: latency CDFs and per-stage bars in one PNG (matplotlib, no display)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from endofuse.outputs import atomic_write_bytes

COLORS = {"engine only": "tab:green", "max": "tab:blue", "paced": "tab:orange"}
STAGE_ORDER = ("preprocess", "queue", "sync", "infer", "postprocess", "overlay", "output")


def plot_bench(result: dict, latencies: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless machines
    import matplotlib.pyplot as plt

    fig, (cdf_ax, bar_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, values in latencies.items():
        data = np.sort(np.asarray(values, dtype=float))
        if data.size:
            cdf_ax.plot(data, np.arange(1, data.size + 1) / data.size, color=COLORS.get(name),
                        label=f"{name} (p50 {np.median(data):.1f} ms)")
    cdf_ax.set_xlabel("latency (ms)")
    cdf_ax.set_ylabel("fraction of frames")
    cdf_ax.set_title("end-to-end latency CDF (warm-up excluded)")
    cdf_ax.grid(alpha=0.3)
    cdf_ax.legend(loc="lower right")

    modes = result["modes"]
    stages = [s for s in STAGE_ORDER if any(s in m["stages_ms"] for m in modes.values())]
    x = np.arange(len(stages))
    width = 0.8 / max(1, len(modes))
    for i, (name, mode) in enumerate(modes.items()):
        p50 = [mode["stages_ms"].get(s, {}).get("p50", 0.0) for s in stages]
        p99 = [mode["stages_ms"].get(s, {}).get("p99", 0.0) for s in stages]
        bar_ax.bar(x + i * width, p50, width, color=COLORS.get(name), label=f"{name} p50")
        bar_ax.scatter(x + i * width, p99, marker="_", s=200, color="black" if i == 0 else "dimgray",
                       label=f"{name} p99")
    bar_ax.set_xticks(x + width * (len(modes) - 1) / 2, stages, rotation=20)
    bar_ax.set_ylabel("ms per frame")
    bar_ax.set_title("per-stage time")
    bar_ax.grid(axis="y", alpha=0.3)
    bar_ax.legend()
    fig.suptitle(f"{result['model']} | {result['engine']} | efficiency {result['efficiency']:.2f}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())  # checked: a full disk is one line naming the file
    plt.close(fig)
