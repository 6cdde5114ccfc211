"""The "Video pair" and "Endoscope recording" handlers: run the realtime pipeline over
two uploaded videos (WLI, NBI) or one recording of a processor output switched by
hand between WLI and NBI, stream the overlaid frames while they are processed,
then offer the full overlaid video, report.json and a latency CDF.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from endofuse.demo.engines import EngineCache
from endofuse.demo.pair import USER_ERRORS
from endofuse.demo.plots import latency_cdf_figure
from endofuse.demo.uploads import bgr_to_rgb, check_video_upload
from endofuse.outputs import finite_or_none, write_json
from endofuse.realtime.output.stabilise import StabiliseConfig

# The preview only needs to look live; sending every frame to the browser would
# make the JPEG encode + websocket the bottleneck on fast engines.
PREVIEW_INTERVAL_S = 1 / 15
DEFAULT_FPS = 30.0
# The stabiliser and overlay timing of `endofuse run`'s defaults: the demo shows what a run would show.
STABILISE = StabiliseConfig()
OVERLAY_TIMING = "sync"
# VP8 in WebM: every browser plays it and OpenCV's bundled FFmpeg writes it
# (its H.264 encoder is not available in the pip wheels).
VIDEO_FOURCC, VIDEO_SUFFIX = "VP80", ".webm"


class OverlayVideoWriter:
    """Writes BGR frames to a browser-playable video; opens on the first frame (its size is known then)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self._writer, self.frames = Path(path), fps, None, 0

    def write(self, frame_bgr: np.ndarray) -> None:
        if self._writer is None:
            height, width = frame_bgr.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC)
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
            if not self._writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {VIDEO_FOURCC} video to {self.path}")
        self._writer.write(frame_bgr)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def video_fps(path: str) -> float:
    capture = cv2.VideoCapture(path)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return fps if 1 <= fps <= 240 else DEFAULT_FPS


def default_build_pipeline():
    from endofuse.realtime import build_pipeline

    return build_pipeline


def summary_text(report: dict, video_name: str) -> str:
    """A few readable lines from the pipeline's report.json content."""
    lines = [f"{report.get('frames', 0)} frames -> {video_name} | engine {report.get('engine', '?')} | "
             f"model {report.get('model', '?')}"]
    latency = report.get("latency_ms") or {}
    if "p50" in latency:
        counted = report.get("counted_frames", "?")
        lines.append(f"latency over {counted} frames after warm-up: "
                     + ", ".join(f"{k} {latency[k]:.1f} ms" for k in ("p50", "p90", "p99", "max") if k in latency))
    if "endoscope" in report:  # one recording: frames per mode, switches, how old the NBI memory was
        age = report["endoscope"]["memory"]["memory_age_ms"].get("p50")
        lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in report.get("modes", {}).items() if n)
                     + f"; {report['endoscope']['switches']} WLI/NBI switches"
                     + ("" if age is None or age != age else f"; NBI memory age p50 {age / 1000:.1f} s"))
    elif "paired" in report:
        lines.append(f"pairs: {report['paired']} fused, {report.get('stale_pairs', 0)} stale, "
                     f"{report.get('nbi_missing', 0)} without NBI (WLI-ONLY); "
                     f"fps {report.get('fps', float('nan')):.1f}")
    temporal, overlay = report.get("temporal"), report.get("overlay")
    if temporal and overlay:  # the stabiliser's setting and the overlay's age, as `endofuse run` prints them
        age = overlay["age_ms"].get("p50")
        lines.append(f"stabilise {temporal['settings']['stabilise']} (min {temporal['settings'].get('min_frames', 1)} "
                     f"frames); overlay {overlay['timing']}, age p50 "
                     + ("n/a" if age is None or age != age else f"{overlay['age_frames']['p50']:.0f} frames "
                        f"{age:.0f} ms"))
    return "\n".join(lines)


def process_video_pair(engines: EngineCache, wli_video: str | None, nbi_video: str | None, alpha: float,
                       model_label: str, backend: str, max_frames: int, out_root: Path, build_pipeline=None):
    """Generator for the video tab; yields (preview RGB, video, report file, CDF figure, status text).

    The pipeline runs "as fast as possible" (not paced, lossless): a recorded
    video is processed frame by frame and every frame lands in the output video.
    """
    wli_path = check_video_upload(wli_video, "WLI video")
    if wli_path is None:
        raise gr.Error("Upload a WLI video first (the NBI video is optional).")
    nbi_path = check_video_upload(nbi_video, "NBI video")
    yield from _process(engines, model_label, backend, wli_path, out_root, build_pipeline,
                        lambda build, engine: build(wli_path, nbi_path, engine, live=False, alpha=float(alpha),
                                                    frames=int(max_frames), stabilise=STABILISE,
                                                    overlay_timing=OVERLAY_TIMING))


def process_endoscope_video(engines: EngineCache, video: str | None, alpha: float, model_label: str, backend: str,
                            max_frames: int, out_root: Path, build_pipeline=None, cases: list | None = None):
    """Generator for the "Endoscope recording" tab: one processor output, WLI and NBI switched by hand
    (`build_pipeline(endoscope=...)`: content area, modality, quality gate, NBI memory); same outputs.

    `cases`: a list that gets the recording's case folder (`run --case`: events, key frames, review page) appended
    once the run has finished; None records none."""
    path = check_video_upload(video, "Endoscope recording")
    if path is None:
        raise gr.Error("Upload a recording of the processor output first.")
    yield from _process(engines, model_label, backend, path, out_root, build_pipeline,
                        lambda build, engine, sinks=(): build(engine=engine, endoscope=path, live=False,
                                                              alpha=float(alpha), frames=int(max_frames),
                                                              stabilise=STABILISE, overlay_timing=OVERLAY_TIMING,
                                                              sinks=sinks), cases=cases, alpha=float(alpha))


def _case_recorder(folder: Path, fps: float, engine, alpha: float):
    """The `run --case` recorder with the stabiliser settings the demo's pipeline runs (`STABILISE`)."""
    from endofuse.realtime.output.overlay import OverlayStyle
    from endofuse.realtime.record.case import CaseRecorder
    from endofuse.realtime.segment import engine_label

    info = {"model": getattr(engine, "model_label", ""), "engine": engine_label(engine), "input": "endoscope",
            "checkpoint": "demo"}
    return CaseRecorder(folder, fps, STABILISE.min_frames, info, OverlayStyle(alpha=alpha))


def _process(engines: EngineCache, model_label: str, backend: str, video_path: str, out_root: Path, build_pipeline,
             make_pipeline, cases: list | None = None, alpha: float = 0.45):
    """Run `make_pipeline(build_pipeline, engine[, sinks])` to the end; yields what the video tabs show."""
    out_dir = Path(tempfile.mkdtemp(prefix="video-", dir=out_root))
    fps = video_fps(video_path)
    writer = OverlayVideoWriter(out_dir / f"overlay{VIDEO_SUFFIX}", fps)
    latencies: list[float] = []
    last_preview = 0.0
    try:
        engine = engines.get(model_label, backend)
        build = build_pipeline or default_build_pipeline()
        if cases is None:
            pipeline = make_pipeline(build, engine)
        else:
            pipeline = make_pipeline(build, engine, sinks=[_case_recorder(out_dir / "case", fps, engine, alpha)])
        for result in pipeline:  # iterating to the end also closes the pipeline
            writer.write(result.overlay)
            latencies.append(float(result.latency_ms))
            if time.monotonic() - last_preview >= PREVIEW_INTERVAL_S:
                last_preview = time.monotonic()
                status = f"frame {result.index}: {result.mode}"
                yield bgr_to_rgb(result.overlay), gr.skip(), gr.skip(), gr.skip(), status
        report = pipeline.report()
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc
    finally:
        writer.close()
    if not latencies:
        raise gr.Error(f"video '{Path(video_path).name}' gave no frames")
    if cases is not None:
        cases.append(out_dir / "case")
    report_path = out_dir / "report.json"
    write_json(report_path, finite_or_none(report))  # strict JSON: null where a statistic is undefined
    # The CDF shows the frames the report's percentiles count (warm-up frames excluded).
    counted = latencies[min(int(report.get("warmup_frames", 0)), len(latencies) - 1):]
    yield (gr.skip(), str(writer.path), str(report_path), latency_cdf_figure(counted, "latency after warm-up"),
           summary_text(report, writer.path.name))
