"""`endofuse run`: segment a live or recorded WLI/NBI pair, overlay it, report latency.

    endofuse run --wli synthetic --nbi synthetic --frames 300 --out overlay.mp4 --report report.json
    endofuse run --wli wli.mp4 --nbi nbi.mp4 --checkpoint runs/tiny/best.pt --out out.mp4
    endofuse run --wli 0 --nbi 1 --display                     # two capture devices, live
    endofuse run --wli interleaved:0 --nbi interleaved:0        # one device alternating WLI/NBI

Without --checkpoint it uses the bundled demo weights (trained on synthetic
data: a demo model, labelled so in the HUD and report). Ctrl-C stops cleanly:
the output video is finalised and the report written before exiting.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from endofuse.errors import EndofuseError

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
    parser.add_argument("--checkpoint", default=None,
                        help="a .pt checkpoint, .onnx or TensorRT plan (default: the bundled demo weights)")
    parser.add_argument("--model", default="tiny", help="model config for the bundled weights (default: tiny)")
    parser.add_argument("--engine", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"),
                        help="inference backend (default: auto = TensorRT > ONNX Runtime > torch)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: the engine's choice)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wli", required=True, metavar="SRC",
                        help="WLI source: video file, image folder, camera index or /dev/videoN, rtsp:// URL, "
                             "GStreamer pipeline, 'synthetic[:SEED]' or 'interleaved:SRC'")
    parser.add_argument("--nbi", default=None, metavar="SRC", help="NBI source (same forms; omit for WLI-only)")
    add_source_arguments(parser)
    parser.add_argument("--out", default=None, metavar="VIDEO", help="write the overlaid video (.mp4/.avi/.mkv)")
    parser.add_argument("--frames-dir", default=None, metavar="DIR",
                        help="also write overlay_NNNNNN.png and mask_NNNNNN.png per frame into DIR")
    parser.add_argument("--display", action="store_true", help="show the overlay in a window (q/Esc stops)")
    parser.add_argument("--report", default=None, metavar="JSON", help="write the latency/sync report here")
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help="stop after N WLI frames (needed for cameras and synthetic sources)")
    parser.add_argument("--live", action="store_true",
                        help="play recordings paced at their own fps with latest-frame-wins queues, like a camera "
                             "(default for cameras/streams; files otherwise run as fast as possible, losslessly)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of synthetic and image-folder sources")
    parser.add_argument("--alpha", type=float, default=0.45, help="overlay opacity in [0, 1]")
    parser.add_argument("--no-hud", action="store_true", help="do not draw the HUD box")
    parser.add_argument("--warmup", type=int, default=10, help="frames left out of the statistics (default 10)")
    parser.add_argument("--camera-timeout", type=float, default=30.0,
                        help="seconds a lost camera is retried (with back-off) before giving up")


def main(args: argparse.Namespace) -> int:
    quiet_opencv()
    from endofuse.realtime.engines import open_engine
    from endofuse.realtime.overlay import OverlayStyle
    from endofuse.realtime.pipeline import Pipeline, PipelineConfig
    from endofuse.realtime.sinks import ImageFolderSink, VideoFileSink, WindowSink
    from endofuse.realtime.source_specs import open_source_pair

    if args.frames is not None and args.frames < 1:
        raise EndofuseError(f"--frames must be >= 1, got {args.frames}")
    report_path = Path(args.report) if args.report else None
    if report_path is not None and not report_path.parent.exists():
        raise EndofuseError(f"report '{report_path}': folder '{report_path.parent}' does not exist")
    style = OverlayStyle(alpha=args.alpha, hud=not args.no_hud)  # checks alpha before any work
    wli, nbi = open_source_pair(args.wli, args.nbi, args.fps, args.frames, args.camera_timeout)
    sinks = []
    try:
        engine = open_engine(args.checkpoint, backend=args.engine, device=args.device, model_name=args.model)
        if args.out:
            sinks.append(VideoFileSink(args.out, wli.fps))
        if args.frames_dir:
            sinks.append(ImageFolderSink(args.frames_dir))
        config = PipelineConfig(live=args.live, style=style, frames=args.frames, warmup_frames=args.warmup)
        pipeline = Pipeline(wli, nbi, engine, config, sinks)
        if args.display:
            pipeline.sinks.append(WindowSink("endofuse", pipeline.stop))
        engine.warmup()
    except BaseException:
        for source in (wli, nbi):
            if source is not None:
                source.close()
        raise
    try:
        pipeline.run()
    except KeyboardInterrupt:
        pipeline.close()  # finalises the video before the report is written
        write_report(pipeline.report() | {"interrupted": True}, report_path)
        raise
    report = pipeline.report()
    write_report(report, report_path)
    print(summary_line(report, args.out, report_path))
    return 0


def write_report(report: dict, path: Path | None) -> None:
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def summary_line(report: dict, out: str | None, report_path: Path | None) -> str:
    latency = report["latency_ms"]
    fused = report["paired"] + report["stale_pairs"]
    parts = [
        f"{report['frames']} frames ({fused} fused, {report['nbi_missing']} WLI-only, {report['dropped']} dropped)",
        f"{report['fps']:.1f} fps",
        f"latency p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms",
        f"{report['engine']} / {report['model']}",
    ]
    targets = [str(p) for p in (out, report_path) if p]
    for warning in report.get("warnings", []):
        print(f"endofuse run: warning: {warning}", file=sys.stderr)
    return "endofuse run: " + ", ".join(parts) + (f" -> {', '.join(targets)}" if targets else "")
