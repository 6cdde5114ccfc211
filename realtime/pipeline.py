"""The live pipeline: capture per source, inference, output - concurrent, traced, iterable.

    pipeline = build_pipeline("wli.mp4", "nbi.mp4", engine)          # or "synthetic", "0", ...
    for result in pipeline:                                          # FrameResult per WLI frame
        show(result.overlay)
    report = pipeline.report()                                       # report.json content

`Pipeline.compose()` creates the ports (bounded queues) and operators; the
output stage (postprocess, overlay, HUD, sinks) runs in the caller's thread
while it iterates. Live runs use latest-frame-wins ports (a camera is never
back-pressured, drops are counted); non-live runs of recorded sources use
blocking ports and lose no frame.
"""
from __future__ import annotations

import collections
import sys
from dataclasses import dataclass, field

import cv2
import numpy as np

from endofuse.errors import InvalidOptionError
from endofuse.kernels.mask_overlay import DEFAULT_ALPHA
from endofuse.realtime.input.frame_times import timing_report
from endofuse.realtime.input.source_specs import open_source_pair
from endofuse.realtime.input.sources import DEFAULT_FPS, Source
from endofuse.realtime.operators import CaptureOp, InferenceOp, Inferred
from endofuse.realtime.output.mask_stage import MaskStage
from endofuse.realtime.output.overlay import HudInfo, OverlayStyle
from endofuse.realtime.output.stabilise import StabiliseConfig
from endofuse.realtime.pairing.sync import MISSING, PAIRED, STALE, Synchroniser, SyncPolicy
from endofuse.realtime.queues import BLOCK, LATEST, Closed, FrameQueue, Timeout
from endofuse.realtime.segment import FUSED, WLI_ONLY, engine_label
from endofuse.realtime.tracing import LatencyStats, now


@dataclass
class FrameResult:
    """One output frame: overlay and mask at the WLI frame's native size, plus its trace."""

    index: int
    overlay: np.ndarray
    mask: np.ndarray
    mode: str  # FUSED or WLI-ONLY; one endoscope stream also FUSED-MEMORY, NBI, HOLD
    timings_ms: dict[str, float]
    latency_ms: float  # capture -> overlay ready (pacing waits excluded)
    frame: np.ndarray  # the WLI input frame
    status: str  # paired / stale / missing
    skew_ms: float | None = None
    nbi_index: int | None = None
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineConfig:
    """What changes the graph or its policies; every default is written here once."""

    live: bool = False
    style: OverlayStyle = OverlayStyle()
    frames: int | None = None  # stop after this many WLI frames
    warmup_frames: int = 10  # not counted in the statistics
    sync: SyncPolicy | None = None  # default: from the WLI fps
    live_nbi_buffer: int = 4
    live_nbi_wait_frames: float = 0.25  # live: longest wait for a late NBI frame, in WLI frame periods
    lossless_buffer: int = 1  # deeper queues add latency in max mode without adding throughput
    stop_timeout_s: float = 5.0
    # OpenCV's own thread pool (process-wide) while the pipeline runs: its stages already run on their
    # own threads beside the engine's, and splitting a 1-ms resize over more threads costs CPU the
    # engine needs (measured in benchmarks/pipeline_stages.py). None leaves OpenCV's setting alone.
    opencv_threads: int | None = 1
    # Python's GIL switch interval while the pipeline runs (process-wide; restored on close). Python's
    # 5 ms default lets a capture thread in numpy code hold the GIL for up to 5 ms while the inference
    # thread, back from a 7-ms engine call, waits to hand its result on; 0.5 ms measured +16 % pairs/s
    # and a lower p99.9 with tiny on OpenVINO (docs/pipeline.md). None leaves it alone.
    gil_switch_interval_s: float | None = 0.0005
    # Between inference and overlay: the stabiliser, and which frame the mask is drawn on (output/timing.py).
    # Embedding keeps the per-frame mask unless asked; the commands default to StabiliseConfig() (docs/pipeline.md).
    stabilise: StabiliseConfig = StabiliseConfig(mode="off")
    overlay_timing: str = "sync"


class Pipeline:
    def __init__(self, wli: Source, nbi: Source | None, engine, config: PipelineConfig = PipelineConfig(),
                 sinks: list | tuple = (), classifier=None, endoscope=None, labels=None) -> None:
        # A camera cannot wait for a file: with any live source, recordings are paced too.
        live = config.live or wli.live or bool(nbi is not None and nbi.live)
        self.config = config if live == config.live else PipelineConfig(**{**config.__dict__, "live": live})
        self.wli, self.nbi, self.engine, self.sinks = wli, nbi, engine, list(sinks)
        self.classifier = classifier  # realtime.classifier.FrameClassifier: class + confidence per frame
        # One endoscope stream (`wli` carries both modes, `nbi` is None): a pairing.endoscope.EndoscopeStage,
        # the capture-side analysis and pairing.
        self.endoscope = endoscope
        self.mode_counts: collections.Counter = collections.Counter()  # per mode, of frames that reached the sinks
        self.class_counts: collections.Counter = collections.Counter()
        self.stats = LatencyStats(self.config.warmup_frames)
        self.sync = Synchroniser(self.config.sync or SyncPolicy.for_fps(wli.fps))
        self.frames_out = 0
        # pairing of the frames that reached the sinks (the synchroniser also counts in-flight ones)
        self.status_counts: collections.Counter = collections.Counter()
        self.resolution_changes = 0
        self.warnings: list[str] = []
        self._errors: list[BaseException] = []
        self._done_times: collections.deque = collections.deque(maxlen=30)
        self._last_size: tuple[int, int] | None = None
        self._started = self._closed = False
        # the stabiliser stage and the overlay timing; `labels(index)`: the true mask of a WLI frame (evaluate)
        self.mask_stage = MaskStage(self.config.stabilise, self.config.overlay_timing, wli.fps,
                                    read_codes=wli.stamp_code, endoscope=endoscope, labels=labels)
        self.compose()

    # -- graph -------------------------------------------------------------
    def compose(self) -> None:
        """Create ports and operators (nothing runs until iteration starts)."""
        live, size = self.config.live, tuple(self.engine.input_size)
        device = getattr(self.engine, "device", None)
        if live:
            self.wli_port = FrameQueue(1, LATEST, "wli")
            self.nbi_port = FrameQueue(self.config.live_nbi_buffer, LATEST, "nbi") if self.nbi else None
            self.result_port = FrameQueue(1, LATEST, "results")
        else:
            n = self.config.lossless_buffer
            self.wli_port = FrameQueue(n, BLOCK, "wli")
            self.nbi_port = FrameQueue(n, BLOCK, "nbi") if self.nbi else None
            self.result_port = FrameQueue(n, BLOCK, "results")
        self.operators = [CaptureOp("capture-wli", self.wli, self.wli_port, size, device, self._fail,
                                    self.config.frames, endoscope=self.endoscope)]
        if self.nbi is not None:
            self.operators.append(CaptureOp("capture-nbi", self.nbi, self.nbi_port, size, device, self._fail,
                                            lost=self._nbi_lost))
        self.operators.append(InferenceOp(self.engine, self.wli_port, self.nbi_port, self.result_port, self.sync,
                                          lossless=not live, fail=self._fail,
                                          live_wait_s=self.config.live_nbi_wait_frames / self.wli.fps,
                                          classifier=self.classifier))

    def _fail(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self.stop()

    def _nbi_lost(self, exc: Exception) -> None:
        self.warnings.append(f"{exc}; continuing WLI-only")

    # -- running -----------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise RuntimeError("a Pipeline runs once; build a new one to run again")
        self._started = True
        if self.config.opencv_threads is not None:
            cv2.setNumThreads(self.config.opencv_threads)
        self._switch_interval = sys.getswitchinterval()
        if self.config.gil_switch_interval_s is not None:
            sys.setswitchinterval(self.config.gil_switch_interval_s)
        epoch = self._epoch = now()
        for source in (self.wli, self.nbi):
            if source is not None:
                source.start(epoch, paced=self.config.live)
        for op in self.operators:
            op.start()

    def __iter__(self):
        self.start()
        try:
            while True:
                try:
                    item = self.result_port.get(timeout=0.25)
                except Timeout:
                    continue
                except Closed:
                    break
                yield self._output(item)
        finally:
            self.close()
        if self._errors:
            raise self._errors[0]

    def run(self) -> dict:
        """Run to the end (sinks get every frame); returns the report."""
        try:
            for _ in self:
                pass
        finally:
            self.close()  # also on Ctrl-C raised between two frames
        return self.report()

    def _output(self, item: Inferred) -> FrameResult:
        """Stabilise, postprocess, overlay, HUD, sinks: the output stage, in the caller's thread."""
        trace, frame = item.wli.trace, item.wli.frame
        trace.add("queue", item.enqueued)
        decided = item.wli.endoscope
        if decided is None:
            mode = FUSED if item.pairing.nbi is not None else WLI_ONLY
            newest = self.operators[0].latest  # the newest captured WLI frame (live timing draws on it)
        else:
            mode, newest = decided.mode, self.operators[0].latest_endoscope
        drawn = self.mask_stage.draw(mode, item.logits, frame, trace, self.config.style,
                                     lambda mode, age_line: self._hud(mode, trace, item.classification, age_line),
                                     newest, decided, item.remote)
        ready = now()
        self.mask_stage.record_output(frame, drawn, drawn.overlay, ready)
        latency = trace.latency_ms(ready)
        if self._last_size is not None and frame.image.shape[:2] != self._last_size:
            self.resolution_changes += 1
        self._last_size = frame.image.shape[:2]
        skew = item.pairing.skew_s
        result = FrameResult(frame.index, drawn.overlay, drawn.mask, drawn.mode, trace.stages_ms, latency,
                             drawn.shown.image, item.pairing.status, None if skew is None else skew * 1000.0,
                             None if item.pairing.nbi is None else item.pairing.nbi.index)
        result.extras["time_s"] = frame.sync_time - self._epoch  # on the recording's timeline for files
        result.extras.update(drawn.extras())
        if decided is not None:
            result.nbi_index = decided.nbi_index
        if item.classification is not None:
            result.extras["class"] = item.classification.label
            result.extras["confidence"] = item.classification.confidence
            self.class_counts[item.classification.label] += 1
        for sink in self.sinks:
            sink.write(result)
        trace.add("output", ready)
        self.stats.record(latency, trace.stages_ms, ready)
        self._done_times.append(ready)
        self.frames_out += 1
        self.status_counts[item.pairing.status] += 1
        self.mode_counts[drawn.mode] += 1
        return result

    @property
    def stabiliser(self):
        """The run's `StabiliseStage` (its temporal metrics)."""
        return self.mask_stage.stabiliser

    @property
    def timing(self):
        """The run's `OverlayTiming` (the overlay's age)."""
        return self.mask_stage.timing

    def _hud(self, mode: str, trace, classification=None, overlay_age: str = "") -> HudInfo:
        times = self._done_times
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        return HudInfo(mode, engine_label(self.engine), getattr(self.engine, "model_label", ""), fps,
                       trace.latency_ms(), "" if classification is None else classification.hud_line(), overlay_age)

    def stop(self) -> None:
        """Ask every stage to stop soon (thread-safe, idempotent)."""
        for source in (self.wli, self.nbi):
            if source is not None:
                source.stop()
        for port in (self.wli_port, self.nbi_port, self.result_port):
            if port is not None:
                port.close()

    def close(self) -> None:
        """Stop, join the threads, close sources and sinks (the output video is finalised here)."""
        if self._closed:
            return
        self._closed = True
        # Only failures from before the stop make the video partial: a thread still reading when the sources
        # close below may fail too, and that is the stop, not a broken stream.
        failed_before_stop = bool(self._errors)
        self.stop()
        deadline = now() + self.config.stop_timeout_s
        for op in self.operators:
            if op.thread is not None:
                op.thread.join(max(0.0, deadline - now()))
        if getattr(self, "_switch_interval", None) is not None:
            sys.setswitchinterval(self._switch_interval)
        for source in (self.wli, self.nbi):
            if source is not None:
                source.close()
        errors = []
        for sink in self.sinks:
            if failed_before_stop and hasattr(sink, "mark_partial"):
                sink.mark_partial(str(self._errors[0]))
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - close every sink, report the first failure
                errors.append(exc)
        if errors and not self._errors:
            self._errors.append(errors[0])

    # -- reporting ---------------------------------------------------------
    def report(self) -> dict:
        """The report.json content: counts, drops, fps and latency percentiles per stage."""
        summary = self.stats.summary()
        sync = self.sync.summary()
        dropped = {"wli_capture": self.wli_port.dropped, "results": self.result_port.dropped}
        report = {
            "model": getattr(self.engine, "model_label", ""),
            "engine": engine_label(self.engine),
            "input_size": list(self.engine.input_size),
            "engine_threads": getattr(self.engine, "threads", None),  # a CPU engine's inference threads
            "wli": self.wli.name,
            "nbi": None if self.nbi is None else self.nbi.name,
            "live": self.config.live,
            "timing": timing_report(self.wli, self.nbi, one_stream=self.endoscope is not None),
            "frames": self.frames_out,
            "paired": self.status_counts[PAIRED],
            "stale_pairs": self.status_counts[STALE],
            "nbi_missing": self.status_counts[MISSING],
            "dropped": sum(dropped.values()),
            "dropped_by_port": dropped,
            "nbi_dropped": 0 if self.nbi_port is None else self.nbi_port.dropped,
            "fps": summary["fps"],
            "latency_ms": summary["latency_ms"],
            "stages_ms": summary["stages_ms"],
            "warmup_frames": min(self.config.warmup_frames, self.stats.seen),
            "counted_frames": self.stats.counted,
            "skew_abs_ms": sync["skew_abs_ms"],
            "skew_mean_ms": sync["skew_mean_ms"],
            "sync": {k: sync[k] for k in ("nbi_duplicates", "nbi_out_of_order", "nbi_too_late", "wli_rejected")},
            "resolution_changes": self.resolution_changes,
            "camera_reconnects": sum(getattr(s, "reconnects", 0) for s in (self.wli, self.nbi) if s is not None),
            "warnings": list(self.warnings),
            **self.mask_stage.summary(),  # "temporal" and "overlay"
        }
        if hasattr(self.engine, "remote_summary"):  # served by `endofuse serve` (realtime/serve/client.py)
            report["remote"] = self.engine.remote_summary()
        if self.endoscope is not None:  # (two-input runs keep the keys the Holoscan runtime also writes)
            report["modes"] = dict(self.mode_counts)
            report["fused_memory"] = self.status_counts["memory"]
            report["endoscope"] = self.endoscope.summary()
        if self.classifier is not None:
            report["classifier"] = {"model": self.classifier.label, "classes": list(self.classifier.classes),
                                    "class_counts": {c: self.class_counts[c] for c in self.classifier.classes}}
        if self.stats.counted == 0:
            report["statistics_note"] = (f"no statistics: {self.frames_out} frame(s), all within the "
                                         f"{self.config.warmup_frames}-frame warm-up "
                                         "(use more --frames or less --warmup)")
        return report  # NaN where undefined; JSON writers turn it into null (endofuse.outputs.finite_or_none)


def build_pipeline(wli_source=None, nbi_source=None, engine=None, live: bool = False, alpha: float = DEFAULT_ALPHA,
                   *, frames: int | None = None, fps: float = DEFAULT_FPS, sinks=(), hud: bool = True,
                   contour: bool = True, style: OverlayStyle | None = None, warmup_frames: int = 10,
                   sync: SyncPolicy | None = None, camera_give_up_s: float = 30.0, classifier=None,
                   stabilise: StabiliseConfig | None = None, overlay_timing: str = "sync",
                   endoscope=None, endoscope_config=None, labels=None) -> Pipeline:
    """A ready-to-iterate pipeline: the one way `run`, `bench`, the soak benchmark and the demo build one.

    Sources are `Source` objects or strings (see `source_specs`). `nbi_source=None`
    runs WLI-only. `fps` applies to synthetic and image-folder sources; `frames`
    stops after that many WLI frames (needed for endless sources). `style`, when
    given, replaces `alpha`/`hud`/`contour`. `classifier`: a
    `realtime.classifier.FrameClassifier` run on every WLI frame. `stabilise` and
    `overlay_timing`: the stage between inference and overlay (docs/pipeline.md);
    `labels(index)`: the true mask of WLI frame `index`, scored in the report's "temporal".

    `endoscope` (instead of the two sources): one stream that carries both
    modes, switched by hand on the processor (a `Source` or any string
    `wli_source` takes, or `synthetic[:SEED]` for a synthetic processor output);
    `endoscope_config` a `pairing.endoscope.EndoscopeConfig` (NBI memory, view
    gate, content area, layout). `frames` then counts every output frame.
    """
    if frames is not None and frames < 1:
        raise InvalidOptionError(f"frames must be >= 1, got {frames}")
    if engine is None:
        raise InvalidOptionError("build_pipeline needs an engine (endofuse.realtime.engines.open_engine())")
    stage = None
    if endoscope is not None:
        from endofuse.realtime.input.source_specs import open_endoscope_source
        from endofuse.realtime.pairing.endoscope import EndoscopeConfig, EndoscopeStage

        if wli_source is not None or nbi_source is not None:
            raise InvalidOptionError("give either endoscope= (one stream) or the WLI/NBI sources, not both")
        stage = EndoscopeStage(endoscope_config or EndoscopeConfig())  # options checked before a source opens
        wli_source = endoscope if isinstance(endoscope, Source) else open_endoscope_source(
            str(endoscope), fps, frames, camera_give_up_s)
    elif wli_source is None:
        raise InvalidOptionError("build_pipeline needs a WLI source (or endoscope=SRC)")
    if isinstance(wli_source, Source):
        if not (nbi_source is None or isinstance(nbi_source, Source)):
            raise TypeError("pass both sources as Source objects or both as strings")
        wli, nbi = wli_source, nbi_source
    else:
        wli, nbi = open_source_pair(wli_source, None if nbi_source is None else str(nbi_source), fps, frames,
                                    camera_give_up_s)
    style = style or OverlayStyle(alpha=alpha, contour=contour, hud=hud)
    config = PipelineConfig(live=live, style=style, frames=frames, warmup_frames=warmup_frames, sync=sync,
                            stabilise=stabilise or PipelineConfig.stabilise, overlay_timing=overlay_timing)
    return Pipeline(wli, nbi, engine, config, sinks, classifier=classifier, endoscope=stage, labels=labels)
