"""The Holoscan side of `endofuse bench --runtime holoscan|both`: the same ring, engine and modes as native.

Besides fps and latency, each Holoscan measurement records what decides
between the schedulers: how many threads ran the operators and how many times
a frame moved from one thread to another on its way (source, sync, inference,
overlay). `scheduler_verdict` names the winner per mode and says why from
those numbers and the cores available.
"""
from __future__ import annotations

import os
import statistics

from endofuse.errors import EndofuseError
from endofuse.realtime.commands.bench import MODE_KEYS
from endofuse.realtime.holoscan.app import SCHEDULERS, EndofuseApp, run_app

ROW_KEYS = ("fps", "dropped", "nbi_dropped", "threads_used", "handoffs_per_frame")


def scheduler_list(text: str) -> list[str]:
    """`--schedulers greedy,event` -> ["greedy", "event"]; `all` -> every scheduler."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    names = list(SCHEDULERS) if names == ["all"] else names
    unknown = [n for n in names if n not in SCHEDULERS]
    if unknown or not names:
        raise EndofuseError(f"--schedulers: unknown scheduler(s) {', '.join(unknown) or '(none given)'}; "
                            f"give some of {', '.join(SCHEDULERS)} or 'all'")
    return names


def workers_for(scheduler: str, workers: int) -> int:
    return 1 if scheduler == "greedy" else workers


def bench_holoscan(engine, wli, nbi, frames: int, warmup: int, live: bool, fps: float, scheduler: str = "greedy",
                   workers: int = 1, stage: dict | None = None) -> tuple[dict, list]:
    """One mode through the Holoscan graph on memory sources; the mode's summary and per-frame latencies.

    `stage`: the overlay op's `stabilise` / `overlay_timing`, as `bench_pipeline`'s (default: the op's own, off)."""
    from endofuse.realtime.holoscan._runtime import quiet_holoscan_logs
    from endofuse.realtime.input.sources import MemorySource

    quiet_holoscan_logs()
    sections = {
        "wli_source": {"source": MemorySource(wli, "bench WLI", fps, loops=None), "frames": frames + warmup,
                       "live": live},
        "nbi_source": {"source": MemorySource(nbi, "bench NBI", fps, loops=None)},
        "inference": {"warmup": False},  # warmed up once by the bench, as for native
        "overlay": dict(stage or {}),
        "recorder": {"warmup_frames": warmup},
        "scheduler": {"kind": scheduler, "workers": workers},
        "tracking": {"enabled": False},  # its per-message timestamps cost throughput; not part of the comparison
    }
    app = EndofuseApp(sections, engine=engine)
    report = run_app(app)
    mode = {key: report[key] for key in MODE_KEYS}
    mode["source_fps"] = fps if live else None
    mode["scheduler"], mode["workers"] = scheduler, workers
    mode["temporal"], mode["overlay"] = report["temporal"], report["overlay"]
    for key in ("threads_used", "handoffs_per_frame", "nbi_dropped_by_stage"):
        mode[key] = report["holoscan"][key]
    return mode, list(app.recorder_op.stats.latency)


def side_by_side(args, engine, wli, nbi, rounds: int) -> tuple[dict, dict]:
    """Interleaved rounds (engine only, native, each scheduler; max and paced) and their medians.

    On a shared machine the load drifts between measurements; interleaving puts
    every configuration under the same drift, and ratios are taken within a
    round (vs engine-only and vs native of the same round) before the median.
    Also returns the first round's full measurements {"engine only" | "native max" | ...: (data, latencies)},
    which the bench reports as its single-pass results.
    """
    from endofuse.realtime.commands.bench import bench_engine, bench_pipeline

    configs = [("native", None)] + [(f"holoscan {s}", s) for s in scheduler_list(args.schedulers)]
    table: list[dict] = []
    first: dict = {}
    for round_index in range(rounds):
        row = {"load_1min": os.getloadavg()[0]}
        measured = {"engine only": bench_engine(engine, wli, nbi, args.frames, args.warmup)}
        row["engine_only_fps"] = measured["engine only"][0]["fps"]
        for name, scheduler in configs:
            for mode, live in (("max", False), ("paced", True)):
                if scheduler is None:
                    out = bench_pipeline(engine, wli, nbi, args.frames, args.warmup, live, args.paced_fps)
                else:
                    out = bench_holoscan(engine, wli, nbi, args.frames, args.warmup, live, args.paced_fps,
                                         scheduler, workers_for(scheduler, args.workers))
                measured[f"{name} {mode}"] = out
                data, lat = out[0], out[0]["latency_ms"]
                row[f"{name} {mode}"] = {"p50": lat["p50"], "p99": lat["p99"], "p999": lat["p999"],
                                         **{k: data[k] for k in ROW_KEYS if k in data}}
        table.append(row)
        if round_index == 0:
            first = measured
    summary = {}
    for name, _ in configs:
        for mode in ("max", "paced"):
            key = f"{name} {mode}"
            runs = [(row[key], row) for row in table]
            summary[key] = {
                "fps_median": statistics.median(r["fps"] for r, _ in runs),
                "fps_range": [min(r["fps"] for r, _ in runs), max(r["fps"] for r, _ in runs)],
                "p50_median": statistics.median(r["p50"] for r, _ in runs),
                "p999_median": statistics.median(r["p999"] for r, _ in runs),
                "p999_over_p50_median": statistics.median(r["p999"] / r["p50"] for r, _ in runs),
                "dropped_median": statistics.median(r["dropped"] for r, _ in runs),
                "nbi_dropped_median": statistics.median(r["nbi_dropped"] for r, _ in runs),
                "efficiency_median": statistics.median(r["fps"] / row["engine_only_fps"] for r, row in runs),
                "vs_native_fps_median": statistics.median(r["fps"] / row[f"native {mode}"]["fps"] for r, row in runs),
            }
    return {"rounds": table, "summary": summary, "frames_per_measurement": args.frames}, first


def scheduler_verdict(holoscan: dict, side: dict | None = None) -> dict:
    """Per mode: the winning scheduler, the numbers it won on, and why, from the threads and hand-offs measured.

    max mode is won on throughput; paced mode (the source caps the rate) on
    fewest dropped frames, then the lowest p99. With interleaved rounds the
    medians decide, and a win inside the round-to-round fps spread is called
    not separable.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    verdict: dict = {"cores": cores}
    for mode in ("max", "paced"):
        rows = {}
        for name, run in holoscan.items():
            data = run["modes"][mode]
            row = {"fps": data["fps"], "p99_ms": data["latency_ms"]["p99"], "dropped": data["dropped"],
                   "threads_used": data["threads_used"], "handoffs_per_frame": data["handoffs_per_frame"]}
            med = (side or {}).get("summary", {}).get(f"holoscan {name} {mode}")
            if med:  # the rounds' medians are steadier than one pass
                row.update(fps=med["fps_median"], fps_range=med["fps_range"], dropped=med["dropped_median"])
            rows[name] = row
        if mode == "max":
            ranked = sorted(rows, key=lambda n: -rows[n]["fps"])
        else:
            ranked = sorted(rows, key=lambda n: (rows[n]["dropped"], rows[n]["p99_ms"]))
        verdict[mode] = {"winner": ranked[0], "ranking": ranked, "by": rows, "why": _why(mode, ranked, rows, cores)}
    return verdict


def _why(mode: str, ranked: list[str], rows: dict, cores: int) -> str:
    win = rows[ranked[0]]
    numbers = "; ".join(f"{n}: {r['fps']:.1f} pairs/s, {r['dropped']:.0f} dropped, p99 {r['p99_ms']:.1f} ms, "
                        f"{r['threads_used']} thread(s), {r['handoffs_per_frame']:.2f} hand-offs/frame"
                        for n, r in rows.items())
    if len(ranked) == 1:
        return numbers
    second = rows[ranked[1]]
    spread = [r for r in (win, second) if "fps_range" in r]
    if mode == "max" and len(spread) == 2 and spread[0]["fps_range"][0] <= spread[1]["fps_range"][1]:
        return f"not separable: {ranked[0]} and {ranked[1]} overlap across rounds ({numbers})"
    # the reason comes from the best-placed scheduler that used a different number of threads
    second = next((rows[n] for n in ranked[1:] if rows[n]["threads_used"] != win["threads_used"]), second)
    if win["threads_used"] < second["threads_used"]:
        reason = (f"fewer threads ({win['threads_used']} vs {second['threads_used']}) and hand-offs "
                  f"({win['handoffs_per_frame']:.2f} vs {second['handoffs_per_frame']:.2f} per frame): each "
                  f"hand-off is a thread wake-up and a GIL transfer, and on {cores} core(s) shared with the "
                  "engine's threads there is little parallel work to win back")
    elif win["threads_used"] > second["threads_used"]:
        reason = ("more threads: a source or the sync operator ticks on one while inference runs on another "
                  "(the engine releases the GIL), where a single thread runs them one after another")
    else:
        reason = "the same thread count; the difference is scheduling overhead and load"
    return f"{ranked[0]} wins {mode}: {reason} ({numbers})"
