"""Pipeline stages: CPU cost of each CPU stage, previous vs current implementation, and engine threads.

    python benchmarks/pipeline_stages.py --json benchmarks/results/pipeline-stages.json
    python benchmarks/pipeline_stages.py --rounds 3 --pipeline-rounds 4 --frames 300

Part 1 times each CPU stage function of the live path (preprocess per frame,
the mask, blend + contour, HUD) on the real sample pairs at their native size
(`../shared/data/wli-nbi-sample`, when present) and on the synthetic frames
`endofuse bench` replays, with logits from the tiny model: the previous
implementation (kept below as the baseline, with OpenCV's default thread pool)
against the current one (OpenCV on one thread, as the pipeline runs it),
called alternately in the same rounds. CPU ms is process CPU time (OpenCV's
worker threads included), the cost that competes with the engine on a small
machine; wall ms is shown beside it. The previous preprocess must give the
same bytes and the previous mask the same pixels (reported).

Part 2 runs the engine alone and the whole pipeline (max mode) for OpenVINO
with 1 thread and with the physical cores, interleaved over rounds: pairs/s,
efficiency, and process CPU ms per pair (the engine's share and the rest).
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from endofuse.kernels.bilinear import source_coords
from endofuse.kernels.frame_preprocess import INV_255, preprocess_cpu
from endofuse.kernels.mask_overlay import foreground_mask_cpu, paint
from endofuse.realtime.output.overlay import HudInfo, draw_hud

from _common import add_json_argument, record, report, table

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "wli-nbi-sample"


# ---- the previous implementations (the baseline) ----
def previous_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """The previous CPU twin: row gather, then column takes in HWC, then a transposing copy."""
    h, w, channels = frame.shape
    y0, y1, wy = source_coords(h, height)
    x0, x1, wx = source_coords(w, width)
    within = np.arange(channels)
    cols0, cols1 = (x0[:, None] * channels + within).ravel(), (x1[:, None] * channels + within).ravel()
    rows = frame.reshape(h, w * channels)
    wx = np.repeat(wx, channels)[None, :]
    keep_x, wy, keep_y = 1 - wx, wy[:, None], 1 - wy[:, None]

    def horizontal(picked_rows: np.ndarray) -> np.ndarray:
        a = np.take(picked_rows, cols0, axis=1).astype(np.float32)
        b = np.take(picked_rows, cols1, axis=1).astype(np.float32)
        a *= keep_x
        b *= wx
        a += b
        return a

    top, bottom = horizontal(rows[y0]), horizontal(rows[y1])
    top *= keep_y
    bottom *= wy
    top += bottom
    return top.reshape(height, width, channels)


def previous_preprocess(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.empty((1, 3, *size), dtype=np.float32)
    out[0] = previous_resize(frame, *size)[:, :, ::-1].transpose(2, 0, 1) * INV_255
    return out


def previous_mask(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """The previous mask: every class plane upsampled, then the compare."""
    channels_last = np.ascontiguousarray(logits.transpose(1, 2, 0), dtype=np.float32)
    up = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    best_other = up[:, :, 1] if up.shape[2] == 2 else up[:, :, 1:].max(axis=2)
    return (best_other > up[:, :, 0]).view(np.uint8)


# ---- inputs ----
def load_pairs(limit: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The sample's (WLI, NBI) pairs at native size, or a note that it is absent."""
    csv = SAMPLE / "Test.csv"
    if not csv.is_file():
        return [], "sample absent"
    pairs = []
    for line in csv.read_text().splitlines()[1:limit + 1]:
        wli, nbi = line.split(",")[:2]
        pairs.append((cv2.imread(str(SAMPLE / wli)), cv2.imread(str(SAMPLE / nbi))))
    return pairs, f"{len(pairs)} sample pairs, native sizes"


def synthetic_pairs(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from endofuse.realtime.commands.bench import load_ring

    wli, nbi, _ = load_ring("synthetic", count)
    return list(zip(wli, nbi, strict=True))


def with_logits(engine, pairs):
    from endofuse.realtime.segment import preprocess

    size = tuple(engine.input_size)
    return [(w, n, np.asarray(engine.infer(preprocess(w, size), preprocess(n, size)))[0]) for w, n in pairs]


# ---- part 1: stage functions ----
def stage_calls(size: tuple[int, int]) -> dict[str, tuple]:
    """stage -> (previous call, current call), each taking (wli, nbi, logits, mask)."""
    hud = HudInfo("FUSED", "openvino-bf16", "tiny (demo weights, synthetic data)", 97.0, 12.3)

    def hud_on_copy(frame):
        draw_hud(frame.copy(), hud)

    return {
        "preprocess (per frame)": (lambda w, n, lg, m: previous_preprocess(w, size),
                                   lambda w, n, lg, m: preprocess_cpu([w], size).numpy()),
        "mask (upsample + argmax)": (lambda w, n, lg, m: previous_mask(lg, *w.shape[:2]),
                                     lambda w, n, lg, m: foreground_mask_cpu(lg, *w.shape[:2])),
        "blend + contour": (lambda w, n, lg, m: paint(w, m), lambda w, n, lg, m: paint(w, m)),
        "HUD (incl. frame copy)": (lambda w, n, lg, m: hud_on_copy(w), lambda w, n, lg, m: hud_on_copy(w)),
    }


def time_stages(sets: dict[str, list], size: tuple[int, int], rounds: int, repeats: int, cv2_threads: int) -> dict:
    """{(set, stage, variant): [cpu ms], ...} and wall, variants alternating call by call."""
    cpu: dict[tuple, list[float]] = {}
    wall: dict[tuple, list[float]] = {}
    calls = stage_calls(size)
    threads = {"previous": cv2_threads, "current": 1}
    for _ in range(rounds):
        for set_name, items in sets.items():
            for stage, variants in calls.items():
                for wli, nbi, logits, mask in items:
                    for _ in range(repeats):
                        for variant, fn in zip(("previous", "current"), variants, strict=True):
                            cv2.setNumThreads(threads[variant])
                            c0, w0 = time.process_time(), time.perf_counter()
                            fn(wli, nbi, logits, mask)
                            c1, w1 = time.process_time(), time.perf_counter()
                            cpu.setdefault((set_name, stage, variant), []).append((c1 - c0) * 1000)
                            wall.setdefault((set_name, stage, variant), []).append((w1 - w0) * 1000)
    cv2.setNumThreads(cv2_threads)
    return {"cpu": cpu, "wall": wall}


def agreement(sets: dict[str, list], size: tuple[int, int]) -> list[list]:
    rows = []
    for set_name, items in sets.items():
        pre = max(float(np.abs(previous_preprocess(w, size) - preprocess_cpu([w], size).numpy()).max())
                  for w, _, _, _ in items)
        masks = sum(int((previous_mask(lg, *w.shape[:2]) != m).sum()) for w, _, lg, m in items)
        pixels = sum(w.shape[0] * w.shape[1] for w, _, _, _ in items)
        fg = sum(int(m.sum()) for _, _, _, m in items) / pixels
        rows.append([set_name, pre, masks, pixels, fg])
    return rows


# ---- part 2: engine threads inside the pipeline ----
def thread_rounds(wli, nbi, frames: int, warmup: int, rounds: int, thread_counts: list[int]) -> list[dict]:
    from endofuse.realtime.commands.bench import bench_pipeline
    from endofuse.realtime.engines import open_engine
    from endofuse.realtime.segment import preprocess

    engines = {t: open_engine(None, backend="openvino", model_name="tiny", threads=t) for t in thread_counts}
    size = tuple(next(iter(engines.values())).input_size)
    inputs = [(preprocess(w, size), preprocess(n, size)) for w, n in zip(wli, nbi, strict=True)]
    for engine in engines.values():
        engine.warmup()
    out = []
    for round_index in range(rounds):
        for threads, engine in engines.items():
            ring = itertools.cycle(inputs)
            for _ in range(warmup):
                engine.infer(*next(ring))
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(frames):
                engine.infer(*next(ring))
            c1, w1 = time.process_time(), time.perf_counter()
            mode, _ = bench_pipeline(engine, wli, nbi, frames, warmup, live=False, fps=30.0)
            c2, w2 = time.process_time(), time.perf_counter()
            total = frames + warmup
            out.append({"round": round_index, "threads": threads, "engine_fps": frames / (w1 - w0),
                        "engine_cpu_ms": (c1 - c0) * 1000 / frames, "max_fps": mode["fps"],
                        "pipeline_cpu_ms": (c2 - c1) * 1000 / total, "pipeline_wall_ms": (w2 - w1) * 1000 / total,
                        "infer_p50": mode["stages_ms"]["infer"]["p50"], "load_1min": os.getloadavg()[0]})
            out[-1]["efficiency"] = out[-1]["max_fps"] / out[-1]["engine_fps"]
            print(f"# round {round_index} threads {threads}: engine {out[-1]['engine_fps']:.1f}/s, "
                  f"max {mode['fps']:.1f}/s, efficiency {out[-1]['efficiency']:.3f}, "
                  f"load {out[-1]['load_1min']:.2f}", flush=True)
    return out


def median(values) -> float:
    return float(statistics.median(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the stage timings")
    parser.add_argument("--repeats", type=int, default=10, help="calls per frame, stage and variant in a round")
    parser.add_argument("--pairs", type=int, default=5, help="sample pairs to use (at most the sample's count)")
    parser.add_argument("--pipeline-rounds", type=int, default=3,
                        help="interleaved rounds of the engine-threads comparison (0: skip it)")
    parser.add_argument("--frames", type=int, default=300, help="pairs per engine / pipeline measurement")
    parser.add_argument("--threads", default="1,2", help="OpenVINO thread counts to compare (default 1,2)")
    add_json_argument(parser)
    args = parser.parse_args(argv)

    from endofuse.realtime.engines import open_engine

    cv2_default = cv2.getNumThreads()
    engine = open_engine(None, backend="auto", model_name="tiny")
    size = tuple(engine.input_size)
    real, real_note = load_pairs(args.pairs)
    sets = {"synthetic 540x480 (endofuse bench)": with_logits(engine, synthetic_pairs(4))}
    if real:
        sets["sample, native size"] = with_logits(engine, real)
    sets = {name: [(w, n, lg, foreground_mask_cpu(lg, *w.shape[:2])) for w, n, lg in items]
            for name, items in sets.items()}
    timings = time_stages(sets, size, args.rounds, args.repeats, cv2_default)

    rows = []
    for set_name in sets:
        totals = {"previous": 0.0, "current": 0.0}
        for stage in stage_calls(size):
            cells = {}
            for variant in ("previous", "current"):
                cells[variant] = median(timings["cpu"][(set_name, stage, variant)])
                cells[variant + " wall"] = median(timings["wall"][(set_name, stage, variant)])
                totals[variant] += cells[variant] * (2 if stage.startswith("preprocess") else 1)
            rows.append([set_name, stage, cells["previous"], cells["current"], cells["previous"] / cells["current"],
                         cells["previous wall"], cells["current wall"]])
        rows.append([set_name, "per pair (2 x preprocess + the rest)", totals["previous"], totals["current"],
                     totals["previous"] / totals["current"], None, None])
    tables = [table(
        "CPU stages of the live path: previous vs current implementation (medians, same rounds)",
        ["frames", "stage", "previous CPU ms", "current CPU ms", "previous / current", "previous wall ms",
         "current wall ms"], rows,
        f"Engine for the logits: {engine.name}; model input {size[0]}x{size[1]}; {real_note}. Previous: OpenCV's "
        f"default pool ({cv2_default} threads); current: OpenCV on one thread, as the pipeline runs it. CPU ms "
        "counts OpenCV's worker threads too; blend + contour and the HUD are the same code in both columns (they "
        "show the thread-pool setting alone).")]
    tables.append(table(
        "Current vs previous outputs on the same inputs",
        ["frames", "preprocess max abs difference", "mask pixels that differ", "pixels", "foreground fraction"],
        agreement(sets, size),
        "The mask upsamples one plane (logit 1 - logit 0) instead of both: it may differ only where the two "
        "upsampled logits agree to float rounding."))
    details = {"cv2_default_threads": cv2_default, "logits_engine": engine.name}
    if args.pipeline_rounds > 0:
        wli, nbi = zip(*synthetic_pairs(60), strict=True)
        counts = [int(t) for t in args.threads.split(",")]
        runs = thread_rounds(list(wli), list(nbi), args.frames, 30, args.pipeline_rounds, counts)
        details["thread_rounds"] = runs
        thread_rows = []
        for threads in counts:
            mine = [r for r in runs if r["threads"] == threads]
            thread_rows.append([threads, median(r["engine_fps"] for r in mine), median(r["max_fps"] for r in mine),
                                median(r["efficiency"] for r in mine), median(r["engine_cpu_ms"] for r in mine),
                                median(r["pipeline_cpu_ms"] for r in mine), median(r["infer_p50"] for r in mine)])
        loads = [r["load_1min"] for r in runs]
        tables.append(table(
            "OpenVINO threads inside the pipeline (tiny, synthetic 540x480, max mode; medians over rounds)",
            ["threads", "engine-only pairs/s", "max-mode pairs/s", "efficiency", "engine CPU ms/pair",
             "pipeline CPU ms/pair", "infer p50 ms in pipeline"], thread_rows,
            f"{args.pipeline_rounds} interleaved rounds of {args.frames} pairs; 1-min load {min(loads):.1f}-"
            f"{max(loads):.1f} during them. CPU ms/pair: process CPU time per pair (all threads), the figure that "
            "moves least with other load; with a 1-min load above the 2 cores, the pairs/s columns (and so the "
            "efficiency) measure the other work as much as the engine."))
    rec = record("pipeline_stages", "Pipeline: CPU stages before/after, and engine threads", tables,
                 argv=sys.argv[1:] if argv is None else argv, details=details)
    report(rec, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
