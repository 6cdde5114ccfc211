"""The Holoscan side of `endofuse bench --runtime holoscan|both`: the same ring, engine and modes as native."""
from __future__ import annotations

from endofuse.realtime.holoscan.app import EndofuseApp, run_app

MODE_KEYS = ("fps", "latency_ms", "stages_ms", "dropped", "stale_pairs", "nbi_missing", "paired", "frames")


def bench_holoscan(engine, wli, nbi, frames: int, warmup: int, live: bool, fps: float, scheduler: str = "greedy",
                   workers: int = 1) -> tuple[dict, list]:
    """One mode through the Holoscan graph on memory sources; the mode's summary and per-frame latencies."""
    from endofuse.realtime.sources import MemorySource

    sections = {
        "wli_source": {"source": MemorySource(wli, "bench WLI", fps, loops=None), "frames": frames + warmup,
                       "live": live},
        "nbi_source": {"source": MemorySource(nbi, "bench NBI", fps, loops=None)},
        "inference": {"warmup": False},  # warmed up once by the bench, as for native
        "recorder": {"warmup_frames": warmup},
        "scheduler": {"kind": scheduler, "workers": workers},
        "tracking": {"enabled": False},  # its per-message timestamps cost throughput; not part of the comparison
    }
    app = EndofuseApp(sections, engine=engine)
    report = run_app(app)
    mode = {key: report[key] for key in MODE_KEYS}
    mode["source_fps"] = fps if live else None
    mode["scheduler"], mode["workers"] = scheduler, workers
    return mode, list(app.recorder_op.stats.latency)
