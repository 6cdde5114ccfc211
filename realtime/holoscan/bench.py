"""The Holoscan side of `endofuse bench --runtime holoscan|both`: the same ring, engine and modes as native."""
from __future__ import annotations

from endofuse.realtime.holoscan.app import EndofuseApp, run_app

MODE_KEYS = ("fps", "latency_ms", "stages_ms", "dropped", "stale_pairs", "nbi_missing", "paired", "frames")


def bench_holoscan(engine, wli, nbi, frames: int, warmup: int, live: bool, fps: float, scheduler: str = "greedy",
                   workers: int = 1) -> tuple[dict, list]:
    """One mode through the Holoscan graph on memory sources; the mode's summary and per-frame latencies."""
    from endofuse.realtime.holoscan._runtime import quiet_holoscan_logs
    from endofuse.realtime.sources import MemorySource

    quiet_holoscan_logs()
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


def side_by_side(args, engine, wli, nbi, rounds: int) -> dict:
    """Interleaved rounds (engine only, native, each scheduler; max and paced) and their medians.

    On a shared machine the load drifts between measurements; interleaving puts
    every configuration under the same drift, and ratios are taken within a
    round (vs engine-only and vs native of the same round) before the median.
    """
    import os
    import statistics

    from endofuse.realtime.bench_command import bench_engine, bench_pipeline

    schedulers = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    configs = [("native", None)] + [(f"holoscan {s}", s) for s in schedulers]
    table: list[dict] = []
    for _ in range(rounds):
        row = {"load_1min": os.getloadavg()[0]}
        row["engine_only_fps"] = bench_engine(engine, wli, nbi, args.frames, args.warmup)[0]["fps"]
        for name, scheduler in configs:
            for mode, live in (("max", False), ("paced", True)):
                if scheduler is None:
                    data, _ = bench_pipeline(engine, wli, nbi, args.frames, args.warmup, live, args.paced_fps)
                else:
                    workers = 1 if scheduler == "greedy" else args.workers
                    data, _ = bench_holoscan(engine, wli, nbi, args.frames, args.warmup, live, args.paced_fps,
                                             scheduler, workers)
                lat = data["latency_ms"]
                row[f"{name} {mode}"] = {"fps": data["fps"], "p50": lat["p50"], "p99": lat["p99"],
                                         "p999": lat["p999"], "dropped": data["dropped"]}
        table.append(row)
    summary = {}
    for name, _ in configs:
        for mode in ("max", "paced"):
            key = f"{name} {mode}"
            runs = [(row[key], row) for row in table]
            summary[key] = {
                "fps_median": statistics.median(r["fps"] for r, _ in runs),
                "p50_median": statistics.median(r["p50"] for r, _ in runs),
                "p999_median": statistics.median(r["p999"] for r, _ in runs),
                "p999_over_p50_median": statistics.median(r["p999"] / r["p50"] for r, _ in runs),
                "dropped_median": statistics.median(r["dropped"] for r, _ in runs),
                "efficiency_median": statistics.median(r["fps"] / row["engine_only_fps"] for r, row in runs),
                "vs_native_fps_median": statistics.median(r["fps"] / row[f"native {mode}"]["fps"] for r, row in runs),
            }
    return {"rounds": table, "summary": summary, "frames_per_measurement": args.frames}
