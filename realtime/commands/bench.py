"""`endofuse bench`: engine-only speed, then the pipeline as fast as possible and paced.

    endofuse bench --model tiny --engine openvino --frames 600 --json bench.json --plot bench.png

1. engine_only: `engine.infer` on preprocessed pairs, nothing else.
2. modes.max: the whole pipeline (capture, preprocess, sync, infer, postprocess,
   overlay) lossless and as fast as possible.
3. modes.paced: the same, fed like a camera at `--paced-fps` (latest-frame-wins).
efficiency = max-mode fps / engine-only fps (1.0: the pipeline costs no throughput).
4. with `--endoscope SRC` (`synthetic[:SEED]`: a synthetic processor output, or a
   recording): the CPU time per frame of the endoscope analysis
   (`FrameAnalyzer.analyze`: content area, modality, quality gate; and the NBI
   memory's view signature; thread CPU time, one OpenCV thread as in the
   pipeline) and the pipeline on that one stream in both modes, beside the
   two-input numbers above (`endoscope.vs_two_input`: fps ratio per mode).

Frames are decoded or rendered once into a ring of up to `--ring` frames held
in memory and replayed, so the measurement is of the pipeline, not of the
video decoder or the scene generator (a capture card also delivers raw frames).
All numbers come from this one run; warm-up frames are left out.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from endofuse.checks import check_fps, check_thread_options, usable_cpus
from endofuse.errors import EndofuseError
from endofuse.machine import describe_machine, machine_line, time_calls
from endofuse.outputs import check_output_file, refuse_overlap
from endofuse.realtime.commands.run import (
    add_source_arguments,
    add_stabilise_arguments,
    open_pipeline_engine,
    quiet_opencv,
    write_report,
)
from endofuse.realtime.tracing import now, percentiles

MODE_KEYS = ("fps", "latency_ms", "stages_ms", "dropped", "nbi_dropped", "stale_pairs", "nbi_missing", "paired",
             "frames")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--frames", type=int, default=600, help="frames per measurement (default 600)")
    parser.add_argument("--source", default="synthetic",
                        help="'synthetic[:SEED]' or a video FILE (used as both WLI and NBI) (default: synthetic)")
    parser.add_argument("--endoscope", default=None, metavar="SRC",
                        help="also measure one endoscope stream: 'synthetic[:SEED]' (a synthetic processor output, "
                             "WLI -> NBI -> WLI) or a recording: the analysis' CPU cost per frame and the pipeline's "
                             "fps beside the two-input mode")
    parser.add_argument("--paced-fps", type=float, default=30.0, help="source rate of the paced mode (default 30)")
    parser.add_argument("--warmup", type=int, default=30, help="frames left out of each measurement (default 30)")
    parser.add_argument("--ring", type=int, default=60, help="distinct frames held in memory and replayed")
    parser.add_argument("--runtime", default="native", choices=("native", "holoscan", "both"),
                        help="measure the native pipeline, the Holoscan graph (the [holoscan] extra), or both")
    parser.add_argument("--schedulers", default="all",
                        help="Holoscan schedulers to measure, comma-separated greedy,event,multi_thread "
                             "(default: all); the output names the winner per mode and why")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker threads of the event/multi_thread schedulers, from 1 to the CPUs this process "
                             "may use (default 2, or 1 on one CPU)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="with --runtime both: also N interleaved rounds of every configuration, summarised "
                             "as medians of in-round ratios (robust to a drifting machine load)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", default=None, metavar="PNG", help="draw the latency CDF and per-stage bars")
    add_stabilise_arguments(parser)


def load_ring(source: str, count: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Up to `count` (WLI, NBI) frames in memory, and a description of where they came from."""
    from endofuse.realtime.input.source_specs import SYNTHETIC_SIZE, SharedSyntheticScene, _synthetic_seed
    from endofuse.realtime.input.sources import VideoFileSource

    if source == "synthetic" or source.startswith("synthetic:"):
        seed = _synthetic_seed(source, "bench")
        scene = SharedSyntheticScene(seed).scene
        pairs = [scene.frame(i / 30.0)[:2] for i in range(count)]
        described = f"synthetic seed {seed}, {SYNTHETIC_SIZE[1]}x{SYNTHETIC_SIZE[0]}"
        return [p[0] for p in pairs], [p[1] for p in pairs], described
    video = VideoFileSource(source, "bench").open()
    try:
        frames = [f.image for f, _ in zip(video, range(count), strict=False)]  # the first `count` frames
    finally:
        video.close()
    h, w = frames[0].shape[:2]
    return frames, frames, f"{source} ({w}x{h}, first {len(frames)} frames, as WLI and NBI)"


def bench_engine(engine, wli: list[np.ndarray], nbi: list[np.ndarray], frames: int, warmup: int) -> tuple[dict, list]:
    """Engine-only: infer on preprocessed pairs back to back."""
    from endofuse.realtime.segment import preprocess

    device = getattr(engine, "device", None)
    inputs = [(preprocess(w, engine.input_size, device), preprocess(n, engine.input_size, device))
              for w, n in zip(wli, nbi, strict=True)]
    ring = itertools.cycle(inputs)

    def infer() -> None:
        out = engine.infer(*next(ring))
        if hasattr(out, "cpu"):  # torch on CUDA: the result must be there, as in the pipeline
            out.cpu()

    time_calls(infer, 0, warmup)  # warm-up calls only
    started = now()
    latencies = time_calls(infer, frames, clock=now)
    elapsed = now() - started
    return {"fps": frames / elapsed, "latency_ms": percentiles(latencies)}, latencies


def bench_pipeline(engine, wli, nbi, frames: int, warmup: int, live: bool, fps: float,
                   stage: dict | None = None) -> tuple[dict, list]:
    """The whole pipeline on memory sources; returns the mode's summary and its per-frame latencies.

    `stage`: build_pipeline's `stabilise` / `overlay_timing` (default: the pipeline's own)."""
    from endofuse.realtime.input.sources import MemorySource
    from endofuse.realtime.pipeline import build_pipeline

    wli_source = MemorySource(wli, "bench WLI", fps, loops=None)
    nbi_source = MemorySource(nbi, "bench NBI", fps, loops=None)
    pipeline = build_pipeline(wli_source, nbi_source, engine, live, frames=frames + warmup, warmup_frames=warmup,
                              **(stage or {}))
    report = pipeline.run()
    mode = {key: report[key] for key in MODE_KEYS}
    mode["source_fps"] = fps if live else None
    # the native stabiliser stage's sections: not MODE_KEYS, which the Holoscan graph's report fills too
    mode["temporal"], mode["overlay"] = report["temporal"], report["overlay"]
    return mode, list(pipeline.stats.latency)


def load_endoscope_ring(source: str, count: int) -> tuple[list[np.ndarray], str]:
    """Up to `count` frames of one endoscope stream in memory, and where they came from."""
    from endofuse.realtime.input.source_specs import _synthetic_seed
    from endofuse.realtime.input.sources import VideoFileSource

    if source == "synthetic" or source.startswith("synthetic:"):
        from endofuse.model.synthetic_endoscope import MIN_FRAMES, SyntheticEndoscope

        seed = _synthetic_seed(source, "--endoscope")
        clip = SyntheticEndoscope(max(MIN_FRAMES, count), seed=seed)  # the whole WLI -> NBI -> WLI timeline
        h, w = clip.size
        return [clip.render(i)[0] for i in range(clip.frames)], f"synthetic endoscope seed {seed}, {w}x{h}"
    video = VideoFileSource(source, "--endoscope").open()
    try:
        frames = [f.image for f, _ in zip(video, range(count), strict=False)]
    finally:
        video.close()
    h, w = frames[0].shape[:2]
    return frames, f"{source} ({w}x{h}, first {len(frames)} frames)"


def time_endoscope_analysis(ring: list[np.ndarray], rounds: int = 3) -> dict:
    """CPU ms per frame: `FrameAnalyzer.analyze` and its stages (`frame_analysis.time_analysis`), and the NBI
    memory's view signature on the same crops; one OpenCV thread, as the pipeline runs."""
    import time

    import cv2

    from endofuse.realtime.input.content_area import detect_content_area
    from endofuse.realtime.input.frame_analysis import time_analysis
    from endofuse.realtime.pairing.nbi_memory import view_signature

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)  # PipelineConfig.opencv_threads
    try:
        analysis = time_analysis(ring, rounds)
        area = detect_content_area(ring[0])
        crops = itertools.cycle([area.crop(f) for f in ring])
        view = time_calls(lambda: view_signature(next(crops)), len(ring) * rounds, warmup=len(ring),
                          clock=time.thread_time)
    finally:
        cv2.setNumThreads(previous)
    return {**analysis, "view_signature_ms": percentiles(view)}


def bench_endoscope(engine, ring: list[np.ndarray], frames: int, warmup: int, live: bool, fps: float,
                    stage: dict | None = None) -> dict:
    """The whole pipeline on one endoscope stream replayed from memory (`stage`: as in `bench_pipeline`, so the
    comparison with the two-input pipeline runs the same stabiliser)."""
    from endofuse.realtime.input.sources import MemorySource
    from endofuse.realtime.pipeline import build_pipeline

    source = MemorySource(ring, "bench endoscope", fps, loops=None)
    pipeline = build_pipeline(engine=engine, endoscope=source, live=live, frames=frames + warmup,
                              warmup_frames=warmup, **(stage or {}))
    report = pipeline.run()
    return {**{key: report[key] for key in MODE_KEYS}, "mode_counts": report["modes"],
            "source_fps": fps if live else None, "temporal": report["temporal"], "overlay": report["overlay"]}


def run_endoscope_bench(args: argparse.Namespace, engine, two_input: dict) -> dict:
    ring, described = load_endoscope_ring(args.endoscope, max(1, args.ring))
    analysis = time_endoscope_analysis(ring)
    stage = stage_from_args(args)
    modes = {name: bench_endoscope(engine, ring, args.frames, args.warmup, live, args.paced_fps, stage)
             for name, live in (("max", False), ("paced", True))}
    return {"spec": args.endoscope, "source": described, "analysis_cpu_ms": analysis, "modes": modes,
            "vs_two_input": {name: modes[name]["fps"] / two_input[name]["fps"] for name in modes if name in two_input}}


def run_bench(args: argparse.Namespace) -> tuple[dict, dict]:
    if args.frames < 10:
        raise EndofuseError(f"--frames must be >= 10, got {args.frames}")
    check_thread_options(args)  # also when called from Python, not only through the CLI
    if getattr(args, "workers", None) is None:
        args.workers = min(2, usable_cpus())
    stage = stage_from_args(args)  # checked before the frames are loaded
    wli, nbi, described = load_ring(args.source, max(1, min(args.ring, args.frames)))
    if getattr(args, "server", None):  # a room starts offline when its server is away; a benchmark of it
        from endofuse.realtime.serve.client import RoomClient  # would measure nothing: one line instead

        probe = RoomClient(args.server, args.token)
        try:
            probe.health()
        finally:
            probe.close()
    engine = open_pipeline_engine(args)
    engine.warmup()
    runtime = getattr(args, "runtime", "native")
    side, first = None, {}  # with rounds, the first round's measurements are the single-pass results too
    if runtime == "both" and getattr(args, "rounds", 0) > 0:
        from endofuse.realtime.holoscan.bench import side_by_side

        side, first = side_by_side(args, engine, wli, nbi, args.rounds)
    engine_only, engine_lat = first.get("engine only") or bench_engine(engine, wli, nbi, args.frames, args.warmup)
    modes, latencies = {}, {"engine only": engine_lat}
    if runtime in ("native", "both"):
        for name, live in (("max", False), ("paced", True)):
            modes[name], latencies[name] = first.get(f"native {name}") or bench_pipeline(
                engine, wli, nbi, args.frames, args.warmup, live=live, fps=args.paced_fps, stage=stage)
    holoscan = (bench_holoscan_modes(args, engine, wli, nbi, engine_only, latencies, first)
                if runtime != "native" else None)
    result = {
        "model": engine.model_label,
        "engine": engine.name,
        "input_size": list(engine.input_size),
        "engine_threads": engine.thread_choice,
        "frames": args.frames,
        "source": described,
        "engine_only": engine_only,
        "modes": modes,
        "efficiency": modes["max"]["fps"] / engine_only["fps"] if modes else None,
        "machine": describe_machine(),
    }
    if holoscan is not None:
        from endofuse.realtime.holoscan.bench import scheduler_verdict

        result["runtime"] = runtime
        result["holoscan"] = holoscan
        result["scheduler_verdict"] = scheduler_verdict(holoscan, side)
    if side is not None:
        result["side_by_side"] = side
    if getattr(args, "endoscope", None):
        if not modes:
            raise EndofuseError("--endoscope compares with the native two-input pipeline: use --runtime native")
        result["endoscope"] = run_endoscope_bench(args, engine, modes)
    return result, latencies


def stage_from_args(args: argparse.Namespace) -> dict:
    """build_pipeline's stabiliser settings from the flags (absent flags: the commands' defaults)."""
    from endofuse.realtime.output.stabilise import StabiliseConfig, config_from_args

    if not hasattr(args, "stabilise"):
        return {"stabilise": StabiliseConfig(), "overlay_timing": "sync"}
    return {"stabilise": config_from_args(args), "overlay_timing": args.overlay_timing}


def bench_holoscan_modes(args, engine, wli, nbi, engine_only: dict, latencies: dict, first: dict) -> dict:
    """Each Holoscan scheduler in both modes: {scheduler: {"modes": {...}, "efficiency": ...}}.

    `first`: measurements already taken (the first interleaved round), reused as they are.
    """
    from endofuse.realtime.holoscan.bench import bench_holoscan, scheduler_list, workers_for

    out = {}
    for scheduler in scheduler_list(args.schedulers):
        workers = workers_for(scheduler, args.workers)
        modes = {}
        for name, live in (("max", False), ("paced", True)):
            key = f"holoscan {scheduler} {name}"
            modes[name], latencies[key] = first.get(key) or bench_holoscan(
                engine, wli, nbi, args.frames, args.warmup, live, args.paced_fps, scheduler, workers,
                stage_from_args(args))  # the native modes' stabiliser and overlay timing
        out[scheduler] = {"workers": workers, "modes": modes, "efficiency": modes["max"]["fps"] / engine_only["fps"]}
    return out


def main(args: argparse.Namespace) -> int:
    quiet_opencv()
    check_fps(args.paced_fps, "--paced-fps")
    if args.plot and args.runtime == "holoscan":
        raise EndofuseError("--plot draws the native stages; use --runtime both (or native) with --plot")
    source = None if args.source.startswith("synthetic") else args.source
    refuse_overlap({"--json": args.json, "--plot": args.plot}, {"--source": source, "--checkpoint": args.checkpoint})
    for flag, target in (("--json", args.json), ("--plot", args.plot)):
        if target:
            check_output_file(target, flag)
    result, latencies = run_bench(args)
    print(format_table(result))
    if args.json:
        write_report(result, Path(args.json))
    if args.plot:
        from endofuse.realtime.commands.bench_plot import plot_bench

        plot_bench(result, latencies, Path(args.plot))
    return 0


def endoscope_cost_rows(cost: dict) -> list[list]:
    """[step, p50, p99, mean] rows of the analysis' CPU ms per frame (also docs/benchmarks.md's table)."""
    rows = [["content area + modality + quality gate (FrameAnalyzer.analyze)", *(cost["per_frame_ms"][k]
                                                                              for k in ("p50", "p99", "mean"))]]
    rows += [[f"  {stage} alone", *(ms[k] for k in ("p50", "p99", "mean"))] for stage, ms in cost["stages_ms"].items()]
    view = cost["view_signature_ms"]
    rows.append(["view signature (NBI memory, WLI frames)", view["p50"], view["p99"], view["mean"]])
    # sums of the two parts' p50 and mean (a sum of p99s is no p99 of the sum)
    rows.append(["both, summed", cost["per_frame_ms"]["p50"] + view["p50"], None,
                 cost["per_frame_ms"]["mean"] + view["mean"]])
    return rows


def endoscope_table(endo: dict) -> list[str]:
    """The `--endoscope` part of the printed table: the analysis' CPU cost and the pipeline beside two inputs."""
    lines = [f"one endoscope stream: {endo['source']}", "",
             "| analysis step (CPU ms per frame) | p50 | p99 | mean |", "|---|---|---|---|"]
    lines += [f"| {step.strip()} | {p50:.3f} | {'-' if p99 is None else f'{p99:.3f}'} | {mean:.3f} |"
              for step, p50, p99, mean in endoscope_cost_rows(endo["analysis_cpu_ms"])]
    lines += ["", "| endoscope mode | frames/s | x two-input | p50 ms | p99 ms | dropped | modes |",
              "|---|---|---|---|---|---|---|"]
    for name, m in endo["modes"].items():
        counts = ", ".join(f"{k} {v}" for k, v in m["mode_counts"].items())
        ratio = endo["vs_two_input"].get(name)
        lines.append(f"| {name} | {m['fps']:.1f} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                     f"{m['latency_ms']['p50']:.1f} | {m['latency_ms']['p99']:.1f} | {m['dropped']} | {counts} |")
    return lines


def threads_note(choice: dict | None) -> str:
    """' | engine threads: 2 (--threads)' or '' when the engine has no thread count."""
    if not choice or not choice.get("threads"):
        return ""
    return f" | engine threads: {choice['threads']} ({choice['chosen_by']})"


def format_table(result: dict) -> str:
    """A Markdown table of the run, as pasted into the README."""
    rows = [("engine only", result["engine_only"], None)] + [(name, m, m) for name, m in result["modes"].items()]
    for scheduler, data in (result.get("holoscan") or {}).items():
        rows += [(f"holoscan {scheduler} {name}", m, m) for name, m in data["modes"].items()]
    lines = [
        f"model: {result['model']} | engine: {result['engine']} | input {result['input_size'][0]}x"
        f"{result['input_size'][1]} | {result['frames']} frames | source: {result['source']}"
        + threads_note(result.get("engine_threads")),
        machine_line(result.get("machine")),
        "",
        "| mode | pairs/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | dropped | stale | WLI-only |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, data, mode in rows:
        lat = data["latency_ms"]
        counts = ("-", "-", "-") if mode is None else (mode["dropped"], mode["stale_pairs"], mode["nbi_missing"])
        lines.append(f"| {name} | {data['fps']:.1f} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | "
                     f"{lat['p999']:.1f} | {lat['max']:.1f} | {counts[0]} | {counts[1]} | {counts[2]} |")
    lines.append("")
    if result["efficiency"] is not None:
        lines.append(f"efficiency (max / engine only): {result['efficiency']:.3f}")
    for name, mode in result["modes"].items():
        temporal, overlay = mode.get("temporal"), mode.get("overlay")
        if temporal and overlay:
            lines.append(f"{name}: stabilise {temporal['settings']['stabilise']}, mTC {temporal['mtc']:.3f}, "
                         f"{temporal['toggles_per_min']:.1f} toggles/min; overlay {overlay['timing']}, age p50 "
                         f"{overlay['age_frames']['p50']:.0f} frames / {overlay['age_ms']['p50']:.1f} ms")
    for scheduler, data in (result.get("holoscan") or {}).items():
        lines.append(f"holoscan {scheduler} efficiency (max / engine only): {data['efficiency']:.3f}")
    if "endoscope" in result:
        lines += [""] + endoscope_table(result["endoscope"])
    verdict = result.get("scheduler_verdict")
    for mode in ("max", "paced") if verdict else ():
        lines.append(f"holoscan scheduler, {mode}: {verdict[mode]['why']}")
    if "side_by_side" in result:
        rounds = result["side_by_side"]["rounds"]
        lines += ["", f"medians over {len(rounds)} interleaved rounds (load {min(r['load_1min'] for r in rounds):.1f}-"
                  f"{max(r['load_1min'] for r in rounds):.1f}):", "",
                  "| configuration | pairs/s | vs native | vs engine only | p50 ms | p99.9 ms | p99.9/p50 | dropped |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in result["side_by_side"]["summary"].items():
            lines.append(f"| {name} | {m['fps_median']:.1f} | {m['vs_native_fps_median']:.2f} | "
                         f"{m['efficiency_median']:.2f} | {m['p50_median']:.1f} | {m['p999_median']:.1f} | "
                         f"{m['p999_over_p50_median']:.2f} | {m['dropped_median']:.0f} |")
    return "\n".join(lines)
