"""`endofuse run`: segment a live or recorded WLI/NBI pair, overlay it, report latency.

    endofuse run --wli synthetic --nbi synthetic --frames 300 --out overlay.mp4 --report report.json
    endofuse run --wli wli.mp4 --nbi nbi.mp4 --checkpoint runs/tiny/best.pt --out out.mp4
    endofuse run --wli 0 --nbi 1 --display                     # two capture devices, live
    endofuse run --wli interleaved:0 --nbi interleaved:0        # one device alternating WLI/NBI
    endofuse run --endoscope 0 --display                        # one processor output, WLI/NBI switched by hand

Without --checkpoint it uses the bundled demo weights (trained on synthetic
data: a demo model, labelled so in the HUD and report). Ctrl-C (SIGINT) and
SIGTERM stop cleanly: the output video is finalised and the report written
with "interrupted": true before exiting 130 / 143. Outputs are checked against
the inputs before any work (see docs/faults.md).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from endofuse.checks import check_fps, check_threads
from endofuse.errors import EndofuseError
from endofuse.outputs import (
    check_output_file,
    finite_or_none,
    refuse_overlap,
    write_json,
)

# FFmpeg and OpenCV print their own warnings straight to stderr (e.g. "moov atom not
# found" for a truncated file); we report such problems ourselves in one line.
QUIET_OPENCV_ENV = {"OPENCV_FFMPEG_LOGLEVEL": "-8", "OPENCV_LOG_LEVEL": "SILENT", "OPENCV_VIDEOIO_DEBUG": "0"}


def quiet_opencv() -> None:
    for key, value in QUIET_OPENCV_ENV.items():
        os.environ.setdefault(key, value)
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared with `bench`: the model and engine."""
    from endofuse.realtime.engines.factory import BACKENDS, MODEL_CHOICES

    parser.add_argument("--checkpoint", default=None,
                        help="a .pt checkpoint, .onnx, OpenVINO .xml or TensorRT plan (default: the bundled demo "
                             "weights)")
    parser.add_argument("--model", default="tiny", choices=MODEL_CHOICES,
                        help="model config for the bundled weights (default: tiny, the one with bundled weights; "
                             "small and paper need --checkpoint)")
    parser.add_argument("--engine", default="auto", choices=BACKENDS,
                        help="inference backend (default: auto = TensorRT > OpenVINO on x86 CPUs > ONNX Runtime > "
                             "torch)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: the engine's choice)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="inference threads of a CPU engine (OpenVINO, ONNX Runtime), from 1 to the CPUs "
                             "this process may use (default: all physical cores; see docs/pipeline.md)")
    add_server_arguments(parser)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The room side of `endofuse serve` (docs/serving.md); shared with `bench`."""
    group = parser.add_argument_group("segment on an `endofuse serve` server")
    group.add_argument("--server", default=None, metavar="URL",
                       help="run the network on this endofuse serve (e.g. http://gpu-box:8000); frames are "
                            "preprocessed and overlaid here and the video never waits for the server")
    group.add_argument("--token", default=os.environ.get("ENDOFUSE_TOKEN"), metavar="TOKEN",
                       help="the server's --token (default: $ENDOFUSE_TOKEN; the environment keeps it out of ps)")
    group.add_argument("--deadline-ms", type=float, default=100.0, metavar="MS",
                       help="masks older than this are not drawn, and the server drops requests it cannot start "
                            "within it (default 100)")
    group.add_argument("--request-every", default="auto", choices=("auto", "1", "2"),
                       help="which frames go to the server: auto (default) sends every other frame while the "
                            "server answers within a frame apart from its queue, so every frame still gets a mask "
                            "at most 2 frames old at half the load, and every frame otherwise; 1: every frame")
    group.add_argument("--fallback", default=None, choices=("local",),
                       help="while the server is unreachable, segment with the local engine (--checkpoint, "
                            "--engine) and go back to the server when it answers again")


def add_stabilise_arguments(parser: argparse.ArgumentParser) -> None:
    from endofuse.realtime.output.stabilise import add_arguments as add_stage_arguments

    add_stage_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--wli", metavar="SRC",
                        help="WLI source: video file, image folder, camera index or /dev/videoN, rtsp:// URL, "
                             "GStreamer pipeline, 'synthetic[:SEED]' or 'interleaved:SRC'")
    inputs.add_argument("--endoscope", metavar="SRC",
                        help="instead of --wli/--nbi: the processor's one output, switched by hand between WLI and "
                             "NBI (same forms as --wli but interleaved:; 'synthetic[:SEED]' is a synthetic "
                             "processor output)")
    parser.add_argument("--nbi", default=None, metavar="SRC", help="NBI source (same forms; omit for WLI-only)")
    add_endoscope_arguments(parser)
    add_source_arguments(parser)
    parser.add_argument("--out", default=None, metavar="VIDEO", help="write the overlaid video (.mp4/.avi/.mkv)")
    parser.add_argument("--frames-dir", default=None, metavar="DIR",
                        help="also write overlay_NNNNNN.png and mask_NNNNNN.png per frame into DIR")
    parser.add_argument("--display", action="store_true", help="show the overlay in a window (q/Esc stops)")
    parser.add_argument("--force", action="store_true",
                        help="allow --frames-dir to be a folder that already holds files endofuse did not write")
    parser.add_argument("--report", default=None, metavar="JSON", help="write the latency/sync report here")
    parser.add_argument("--log", default=None, metavar="FRAMES.csv",
                        help="write one CSV row per output frame: index, time, modality, mode, NBI frame used and "
                             "its age, view similarity, quality flags, pairing status, the frame drawn on and the "
                             "overlay's age, latency, mask pixels")
    parser.add_argument("--case", default=None, metavar="DIR",
                        help="record a case folder: lesion events with their key frames (content-area crops), "
                             "the overlaid video, case.json and review.html (see docs/case.md)")
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help="stop after N WLI frames (needed for cameras and synthetic sources)")
    parser.add_argument("--live", action="store_true",
                        help="play recordings paced at their own fps with latest-frame-wins queues, like a camera "
                             "(default for cameras/streams; files otherwise run as fast as possible, losslessly)")
    parser.add_argument("--fps", type=float, default=30.0,
                        help="frame rate of synthetic and image-folder sources (finite, > 0)")
    parser.add_argument("--alpha", type=float, default=0.45, help="overlay opacity in [0, 1]")
    parser.add_argument("--no-hud", action="store_true", help="do not draw the HUD box")
    parser.add_argument("--warmup", type=int, default=10, help="frames left out of the statistics (default 10)")
    parser.add_argument("--runtime", default="native", choices=("native", "holoscan"),
                        help="native threads, or an NVIDIA Holoscan graph (needs the [holoscan] extra; "
                             "same outputs and report keys, plus Holoscan's per-path latency)")
    parser.add_argument("--classifier", default=None, metavar="CKPT",
                        help="also classify every WLI frame (class + confidence in the HUD, class counts in the "
                             "report): a `train --task classify` checkpoint, its exported .onnx or OpenVINO .xml")
    parser.add_argument("--camera-timeout", type=float, default=30.0,
                        help="seconds a lost camera is retried (with back-off) before giving up")
    parser.add_argument("--frame-code", action="store_true",
                        help="stamp each WLI frame's index in its bottom-right corner at capture and read it back "
                             "from every output frame: overlay age and capture-to-output latency on the pixels")
    add_stabilise_arguments(parser)


ENDOSCOPE_OPTIONS = ("nbi_memory", "view_gate", "content_area", "layout")


def add_endoscope_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one endoscope stream (`--endoscope`); shared with `bench`."""
    from endofuse.realtime.pairing.nbi_memory import DEFAULT_NBI_MEMORY_S, DEFAULT_VIEW_GATE

    group = parser.add_argument_group("one endoscope stream (--endoscope)")
    group.add_argument("--nbi-memory", type=float, default=None, metavar="SECONDS",
                       help=f"fuse WLI frames with the NBI view remembered from the last NBI look while it is at "
                            f"most this old (default {DEFAULT_NBI_MEMORY_S:g})")
    group.add_argument("--view-gate", type=float, default=None, metavar="SIMILARITY",
                       help=f"least similarity of the WLI view to the one before the NBI look for fusing with the "
                            f"memory, in [0, 1]; 0 disables the gate (default {DEFAULT_VIEW_GATE:g})")
    group.add_argument("--content-area", default=None, metavar="auto|full|X,Y,W,H",
                       help="where the endoscopic image sits in the output frame (default auto: detected, and "
                            "again when the layout changes)")
    group.add_argument("--layout", default=None, metavar="single|side-by-side[:nbi-left|:nbi-right]",
                       help="single (default), or two views side by side on one output: true simultaneous pairs")


def endoscope_config(args: argparse.Namespace):
    """The EndoscopeConfig of `--endoscope` from the flags (checked: one line on a bad value); None without it."""
    given = [f"--{name.replace('_', '-')}" for name in ENDOSCOPE_OPTIONS if getattr(args, name, None) is not None]
    if getattr(args, "endoscope", None) is None:
        if given:
            raise EndofuseError(f"{given[0]} applies to one endoscope stream: use it with --endoscope SRC")
        return None
    from endofuse.realtime.pairing.endoscope import EndoscopeConfig

    options = {"nbi_memory": "nbi_memory_s", "view_gate": "view_gate", "content_area": "content_area",
               "layout": "layout"}
    return EndoscopeConfig(**{field: getattr(args, name) for name, field in options.items()
                              if getattr(args, name, None) is not None})


class Stopped(KeyboardInterrupt):
    """SIGTERM/SIGINT during a run: stop like Ctrl-C, remember which signal for the exit code."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """The first SIGINT/SIGTERM of a run: raised as `Stopped`, or, once `stop_by` is called, handed to a stop.

    A handler runs in the main thread between any two bytecodes. Raised while frames flow, it can land
    between a frame reaching the video and being counted, so the video fails its frame check on close
    (and is deleted) or the report miscounts it. So the running pipeline is only asked to stop, and
    from a helper thread: the main thread may hold a lock that `stop()` takes at that very moment.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._stop: Callable[[], None] | None = None
        self._wake = threading.Event()
        self._done = False

    def stop_by(self, stop: Callable[[], None]) -> None:
        """From now on a signal calls `stop()` and the run ends between two frames (check `signum` after)."""
        self._stop = stop
        threading.Thread(target=self._relay, name="endofuse-signal-stop", daemon=True).start()

    def _relay(self) -> None:
        self._wake.wait()
        if not self._done:
            self._stop()

    def _handle(self, signum, frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second signal is ignored while finalising
        self.signum = signum
        if self._stop is None:
            raise Stopped(signum)
        self._wake.set()

    def _close(self) -> None:
        self._done = True
        self._wake.set()


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM raise `Stopped` once in the main thread (see `StopSignals.stop_by`)."""
    signals = StopSignals()
    previous = {sig: signal.signal(sig, signals._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        signals._close()
        for sig, old in previous.items():
            signal.signal(sig, old)


def _path_inputs(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """Inputs that are files or folders (cameras, streams and synthetic scenes are not)."""
    from endofuse.realtime.input.source_specs import (
        INTERLEAVED_PREFIX,
        STREAM_PREFIXES,
        is_camera,
    )

    inputs, folders = {"--checkpoint": args.checkpoint, "--classifier": getattr(args, "classifier", None)}, []
    for label, spec in (("--wli", args.wli), ("--nbi", args.nbi), ("--endoscope", getattr(args, "endoscope", None))):
        if spec is None:
            continue
        spec = str(spec).removeprefix(INTERLEAVED_PREFIX)
        if spec.startswith(("synthetic",) + STREAM_PREFIXES) or is_camera(spec) or "!" in spec:
            continue
        inputs[label] = spec
        if Path(spec).is_dir():
            folders.append(label)
    return inputs, folders


def check_run_outputs(args: argparse.Namespace) -> None:
    """Everything about the outputs that can fail, checked before a single frame is processed."""
    inputs, input_dirs = _path_inputs(args)
    outputs = {"--out": args.out, "--report": args.report, "--frames-dir": args.frames_dir,
               "--log": getattr(args, "log", None), "--case": getattr(args, "case", None)}
    refuse_overlap(outputs, inputs, output_dirs=["--frames-dir", "--case"], input_dirs=input_dirs)
    for flag in ("--report", "--log"):
        if outputs[flag]:
            check_output_file(outputs[flag], flag)
    if args.frames_dir and Path(args.frames_dir).exists() and not Path(args.frames_dir).is_dir():
        raise EndofuseError(f"--frames-dir '{args.frames_dir}' is an existing file: give a folder")
    if getattr(args, "case", None) and Path(args.case).exists() and not Path(args.case).is_dir():
        raise EndofuseError(f"--case '{args.case}' is an existing file: give a folder")
    endless = [s for s in (args.wli, args.nbi, getattr(args, "endoscope", None))
               if s is not None and str(s).startswith("synthetic")]
    if endless and args.frames is None and not args.display:
        raise EndofuseError(f"'{endless[0]}' is an endless source: give --frames N (or --display and stop with q)")


def main(args: argparse.Namespace) -> int:
    quiet_opencv()
    from endofuse.realtime.input.source_specs import open_endoscope_source, open_source_pair
    from endofuse.realtime.output.overlay import OverlayStyle
    from endofuse.realtime.output.sinks import WindowSink
    from endofuse.realtime.output.stabilise import config_from_args
    from endofuse.realtime.pipeline import build_pipeline

    if args.frames is not None and args.frames < 1:
        raise EndofuseError(f"--frames must be >= 1, got {args.frames}")
    check_fps(args.fps)
    if getattr(args, "endoscope", None) is not None and args.nbi is not None:
        raise EndofuseError("--nbi cannot be used with --endoscope: the endoscope stream carries both modes "
                            "(use --wli and --nbi for two capture cards)")
    endoscope = endoscope_config(args)
    check_run_outputs(args)
    if getattr(args, "runtime", "native") == "holoscan":
        if getattr(args, "case", None):
            raise EndofuseError("--runtime holoscan does not record --case yet: run it with the native runtime "
                                "(leave out --runtime)")
        from endofuse.realtime.holoscan.run import run_holoscan

        return run_holoscan(args, endoscope)
    style = OverlayStyle(alpha=args.alpha, hud=not args.no_hud)  # checks alpha before any work
    stabilise = config_from_args(args)
    with stop_on_signals() as signals:
        try:
            if endoscope is None:
                wli, nbi = open_source_pair(args.wli, args.nbi, args.fps, args.frames, args.camera_timeout)
            else:
                wli, nbi = open_endoscope_source(args.endoscope, args.fps, args.frames, args.camera_timeout), None
        except Stopped as stop:
            return _stopped_code(stop)
        try:
            engine, sinks, classifier = open_run_parts(args, wli)
            wli.stamp_code = args.frame_code
            sources = {"wli_source": wli, "nbi_source": nbi} if endoscope is None else {
                "endoscope": wli, "endoscope_config": endoscope}
            pipeline = build_pipeline(engine=engine, live=args.live, style=style, frames=args.frames,
                                      warmup_frames=args.warmup, sinks=sinks, classifier=classifier,
                                      stabilise=stabilise, overlay_timing=args.overlay_timing, **sources)
            if args.display:
                pipeline.sinks.append(WindowSink("endofuse", pipeline.stop))
            engine.warmup()
            signals.stop_by(pipeline.stop)  # last: until here a signal raises Stopped, no frame is in flight
        except BaseException as exc:
            return abandon_setup(exc, wli, nbi)
        try:
            pipeline.run()  # a signal ends it between two frames; the video is finalised on the way out
        except EndofuseError as exc:
            report_failure(pipeline.report(), exc, pipeline.frames_out, sinks, args, signals.signum)
            raise
        if signals.signum is not None:
            return finish_interrupted(pipeline.report(), signals.signum, sinks, args)
    return finish_run(pipeline.report(), args)


def open_pipeline_engine(args: argparse.Namespace):
    """The engine of `run`/`bench`, with `--threads` when given (`engine.thread_choice` records which)."""
    from endofuse.realtime.engines import open_engine

    threads = check_threads(getattr(args, "threads", None))
    server = getattr(args, "server", None)
    if server is None and getattr(args, "fallback", None):
        raise EndofuseError("--fallback local applies to a served run: give --server URL too")
    remote = {} if server is None else {"server": server, "token": args.token, "deadline_ms": args.deadline_ms,
                                        "fallback": args.fallback, "request_every": args.request_every}
    engine = open_engine(args.checkpoint, backend=args.engine, device=args.device, model_name=args.model,
                         threads=threads, **remote)
    engine.thread_choice = {"threads": getattr(engine, "threads", threads),
                            "chosen_by": "engine default" if threads is None else "--threads"}
    return engine


def open_run_parts(args: argparse.Namespace, wli) -> tuple:
    """(engine, file sinks, classifier or None) of a run, opened the same way by both runtimes."""
    from endofuse.realtime.output.sinks import ImageFolderSink, VideoFileSink

    engine = open_pipeline_engine(args)
    sinks = []
    if args.out:
        sinks.append(VideoFileSink(args.out, wli.fps))
    if args.frames_dir:
        sinks.append(ImageFolderSink(args.frames_dir, force=getattr(args, "force", False)))
    if getattr(args, "log", None):
        from endofuse.realtime.output.frame_log import FrameLogSink

        sinks.append(FrameLogSink(args.log))
    if getattr(args, "case", None):
        sinks.append(case_recorder(args, engine, wli))
    classifier = None
    if getattr(args, "classifier", None):
        from endofuse.realtime.classifier import FrameClassifier

        classifier = FrameClassifier.open(args.classifier)
    return engine, sinks, classifier


def case_recorder(args: argparse.Namespace, engine, wli):
    """The `--case DIR` sink, with what case.json says about the run."""
    from endofuse.realtime.output.overlay import OverlayStyle
    from endofuse.realtime.record.case import CaseRecorder
    from endofuse.realtime.segment import engine_label

    settings = {name: getattr(args, name, None) for name in (
        "stabilise", "on_threshold", "off_threshold", "min_frames", "overlay_timing", "alpha", "live",
        *ENDOSCOPE_OPTIONS)}
    info = {"model": getattr(engine, "model_label", ""), "engine": engine_label(engine),
            "checkpoint": args.checkpoint or "bundled demo weights",
            "input": "endoscope" if getattr(args, "endoscope", None) is not None else "wli+nbi",
            "settings": {k: v for k, v in settings.items() if v is not None}}
    return CaseRecorder(args.case, wli.fps, args.min_frames, info, OverlayStyle(alpha=args.alpha),
                        force=getattr(args, "force", False))


def abandon_setup(exc: BaseException, *sources) -> int:
    """Setup failed or a signal came before any frame: close the opened sources; the exit code, or re-raise."""
    for source in sources:
        if source is not None:
            source.close()
    if isinstance(exc, Stopped):
        return _stopped_code(exc)
    raise exc


def report_failure(report: dict, exc: Exception, frames: int, sinks: list, args: argparse.Namespace,
                   signum: int | None = None) -> None:
    """A source failed mid-stream: the frames so far are kept (as .partial) and the report says where."""
    report = report | {"complete": False, "error": str(exc), "stopped_after_frames": frames}
    if signum is not None:
        report |= {"interrupted": True, "signal": signal.Signals(signum).name}
    video = _written(sinks, args.out)
    if video:
        report["partial_video"] = str(video)
    write_report(report, Path(args.report) if args.report else None)


def finish_interrupted(report: dict, signum: int, sinks: list, args: argparse.Namespace) -> int:
    """Stopped by SIGINT/SIGTERM: the report marked interrupted, the summary on stderr, 128 + signal."""
    report_path = Path(args.report) if args.report else None
    report = report | {"interrupted": True, "signal": signal.Signals(signum).name}
    write_report(report, report_path)
    print(summary_line(report, _written(sinks, args.out), report_path, getattr(args, "case", None)),
          file=sys.stderr)
    return _stopped_code(Stopped(signum))


def finish_run(report: dict, args: argparse.Namespace) -> int:
    report_path = Path(args.report) if args.report else None
    write_report(report, report_path)
    print(summary_line(report, args.out, report_path, getattr(args, "case", None)))
    return 0


def _stopped_code(stop: Stopped) -> int:
    print(f"endofuse run: interrupted ({signal.Signals(stop.signum).name})", file=sys.stderr)
    return 128 + stop.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


def _written(sinks: list, out: str | None) -> str | None:
    for sink in sinks:
        if getattr(sink, "written_path", None) is not None:
            return str(sink.written_path)
    return None


def write_report(report: dict, path: Path | None) -> None:
    """Strict JSON (NaN/inf -> null), written atomically; a full disk is one line naming the file."""
    if path is not None:
        write_json(path, finite_or_none(report))


def _num(value, unit: str = "") -> str:
    return "n/a" if value is None or value != value else f"{value:.1f}{unit}"  # None/NaN: no statistics


def summary_line(report: dict, out: str | None, report_path: Path | None, case: str | None = None) -> str:
    latency = report["latency_ms"]
    fused = report["paired"] + report["stale_pairs"]
    parts = [
        f"{report['frames']} frames ({fused} fused, {report['nbi_missing']} WLI-only, {report['dropped']} dropped)",
        f"{_num(report['fps'])} fps",
        f"latency p50 {_num(latency['p50'], ' ms')}, p99 {_num(latency['p99'], ' ms')}",
        f"{report['engine']} / {report['model']}",
    ]
    temporal, overlay = report.get("temporal"), report.get("overlay")
    if temporal:
        parts.append(f"stabilise {temporal['settings']['stabilise']}: mTC {_num(temporal['mtc'], '')}, "
                     f"{_num(temporal['toggles_per_min'])} toggles/min")
    if overlay:
        parts.append(f"overlay {overlay['timing']}, age p50 {_num(overlay['age_frames']['p50'])} frames")
    remote = report.get("remote")
    if remote:  # served by `endofuse serve`: how many frames carried its mask, and why the others did not
        parts.append(f"server {remote['server']}: {remote['frames_with_server_mask']} frames with its mask, "
                     f"{remote['late_frames']} without a fresh one, {remote['offline_frames']} offline, "
                     f"{remote['fallback_frames']} local fallback, {remote['reconnects']} reconnects")
    if "endoscope" in report:  # one endoscope stream: every mode, and the NBI looks that made FUSED-MEMORY
        modes = ", ".join(f"{n} {mode}" for mode, n in report["modes"].items() if n)
        parts[0] = f"{report['frames']} frames ({modes or 'none'}; {report['endoscope']['switches']} switches, " \
                   f"{report['dropped']} dropped)"
    targets = [str(p) for p in (out, report_path) if p] + ([f"case {case}"] if case else [])
    for warning in report.get("warnings", []):
        print(f"endofuse run: warning: {warning}", file=sys.stderr)
    return "endofuse run: " + ", ".join(parts) + (f" -> {', '.join(targets)}" if targets else "")
