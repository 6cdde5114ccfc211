"""The endofuse operators for a Holoscan 4.x graph (port names are the public contract).

    EndofuseSourceOp --frame--> wli \\
                                     EndofuseSyncOp --pair--> EndofuseInferenceOp --segmented-->
    EndofuseSourceOp --frame--> nbi /
        EndofuseOverlayOp --overlay--> (HolovizOp, a recorder, ...)
                          --result---> EndofuseRecorderOp (or any operator taking a FrameResult)

One endoscope stream: EndofuseSourceOp --frame--> EndofuseEndoscopeOp --pair--> EndofuseInferenceOp
(endoscope.py) in place of the sync op.

Each `compute` calls the same endofuse code the native pipeline runs
(`Synchroniser`, `segment.preprocess`, `engine.infer`, the frame classifier,
`MaskStage`: stabiliser, overlay timing, `segment.finish_frame`), so both
runtimes give the same masks for the same input and an adapter for another
Holoscan API stays a thin shell. Frames that
arrive on the GPU stay there (device.py).
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable

from endofuse.errors import EndofuseError
from endofuse.realtime.holoscan._runtime import import_holoscan

import_holoscan()

from holoscan.conditions import PeriodicCondition  # noqa: E402
from holoscan.core import ConditionType, IOSpec, Operator  # noqa: E402

from endofuse.realtime.holoscan.device import model_input  # noqa: E402
from endofuse.realtime.holoscan.frames import (  # noqa: E402
    FrameStamper,
    Segmented,
    SyncedPair,
    check_channel_order,
    from_bgr,
)
from endofuse.realtime.input.source_specs import open_source  # noqa: E402
from endofuse.realtime.input.sources import Frame, Source, SourceLost  # noqa: E402
from endofuse.realtime.output.mask_stage import MaskStage  # noqa: E402
from endofuse.realtime.output.overlay import HudInfo, OverlayStyle  # noqa: E402
from endofuse.realtime.output.stabilise import StabiliseConfig  # noqa: E402
from endofuse.realtime.pairing.sync import Synchroniser, SyncPolicy  # noqa: E402
from endofuse.realtime.pipeline import FrameResult  # noqa: E402
from endofuse.realtime.segment import FUSED, WLI_ONLY, engine_label  # noqa: E402
from endofuse.realtime.tracing import FrameTrace, now  # noqa: E402

_EPOCH_LOCK = threading.Lock()
_STABILISE = StabiliseConfig()  # the flags' defaults (the op's own default mode is off: the per-frame mask)


class EndofuseOperator(Operator):
    """What every endofuse operator shares: `compute` runs `_compute`, and a user error stops the graph.

    In an `EndofuseApp` a user error (a file that stops decoding mid-stream)
    stops the graph quietly and `run_app` re-raises it as one line; in any other
    graph it propagates as Holoscan reports it.
    """

    def compute(self, op_input, op_output, context) -> None:
        try:
            self._compute(op_input, op_output)
        except EndofuseError as exc:
            self._fail(exc)
            self.fragment.stop_execution()

    def _fail(self, exc: Exception) -> None:
        """Hand `exc` to the `EndofuseApp` (raised by `run_app`); in any other graph, raise it here."""
        errors = getattr(self.fragment, "errors", None)
        if errors is None:
            raise exc
        errors.append(exc)

    def _compute(self, op_input, op_output) -> None:
        raise NotImplementedError


class EndofuseSourceOp(EndofuseOperator):
    """An endofuse source (file, folder, camera, `synthetic`, a `Source`) -> output `frame` (a `Frame`).

    `frames` stops after that many frames read. `live=True` plays a recording like a
    camera: a frame is due every 1/fps, and frames that fell due while the graph
    was busy are skipped and counted in `dropped` (a camera does not wait).
    `gate` (lossless runs of recordings): a function of a frame's sync time; the
    frame is read, held as `pending` and emitted only once the gate returns True,
    so pairing does not depend on scheduling (`EndofuseApp` gates each source on
    the other's progress). The gate sees the frame's own time, not one predicted
    from the frame rate, so variable frame rates gate correctly.
    `stop_with`: end when that source op has ended (an endless NBI source next
    to a finite WLI one); `epoch_from`: share that source op's timeline origin.
    The source ends the operator; with the WLI source ended, the graph drains
    and stops.
    """

    def __init__(self, fragment, *args, source: Source | str | None = None, role: str = "wli", fps: float = 30.0,
                 frames: int | None = None, live: bool = False, gate: Callable[[float], bool] | None = None,
                 stop_with: EndofuseSourceOp | None = None, epoch_from: EndofuseSourceOp | None = None,
                 **kwargs) -> None:
        if source is None and args and isinstance(args[0], (Source, str, os.PathLike)):
            source, args = args[0], args[1:]  # EndofuseSourceOp(fragment, "wli.mp4", role="wli")
        if source is None:
            raise ValueError("EndofuseSourceOp needs a source (a spec string such as 'wli.mp4' or a Source)")
        self.role = role.lower()
        if self.role not in ("wli", "nbi"):
            raise ValueError(f"role must be 'wli' or 'nbi', got {role!r}")
        self.source = source if isinstance(source, Source) else open_source(str(source), self.role.upper(), fps,
                                                                            frames)
        self.max_frames, self.live = frames, live or self.source.live
        self.gate, self.stop_with, self.epoch_from = gate, stop_with, epoch_from
        self.epoch: float | None = None
        self.emitted = self.dropped = 0
        self.last_sync_time: float | None = None  # of the newest frame emitted
        self.pending: Frame | None = None  # read, waiting for the gate
        self.latest: Frame | None = None  # the newest frame read: what `--overlay-timing live` draws on
        self.finished = False
        self.warnings: list[str] = []
        if self.live:  # tick once per frame period instead of spinning
            args = (*args, PeriodicCondition(fragment, int(1e9 / self.source.fps), name=f"{self.role}_period"))
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec) -> None:
        port = spec.output("frame")
        if self.live and self.role == "nbi":
            port.condition(ConditionType.NONE)  # a live NBI stream never waits for WLI: the sync port drops oldest

    def start(self) -> None:
        with _EPOCH_LOCK:  # two sources starting at once on two workers get one timeline
            peer = self.epoch_from or self.stop_with
            self.epoch = peer.epoch if peer is not None and peer.epoch is not None else now()
        # Pacing happens here (skip what fell due) rather than by sleeping, which would stall the scheduler.
        self.source.start(self.epoch, paced=False)

    def _end(self) -> None:
        self.finished = True
        self.source.close()
        self.stop_execution()

    def _compute(self, op_input, op_output) -> None:
        if self.finished:
            return
        limit = math.inf if self.max_frames is None else self.max_frames  # frames read, skipped ones included
        if self.stop_with is not None and self.stop_with.finished:
            return self._end()
        if self.pending is None:
            if self.emitted + self.dropped >= limit:
                return self._end()
            if self.live and not self.source.live:
                due = min(math.floor((now() - self.epoch) * self.source.fps), limit - 1)
                if self.emitted + self.dropped > due:
                    return  # not due yet
                while self.emitted + self.dropped < due and self.source.next_frame() is not None:
                    self.dropped += 1
            self.pending = self._read()
            if self.pending is None:
                return self._end()
        if self.gate is not None and not self.gate(self.pending.sync_time):
            return  # lossless: the other stream has not reached this frame's time yet
        frame, self.pending = self.pending, None
        # the sync op counts gaps in `seq` as frames lost at its port; `thread` feeds the hand-off counts
        frame.extras.update(seq=self.emitted, thread=threading.get_ident())
        self.emitted += 1  # before last_sync_time: the other source's gate reads them in that order
        self.last_sync_time = frame.sync_time
        op_output.emit(frame, "frame")

    def _read(self) -> Frame | None:
        try:
            frame = self.source.next_frame()
            self.latest = frame or self.latest
            return frame
        except SourceLost as exc:
            if self.role == "wli":
                raise
            self.warnings.append(f"{exc}; continuing WLI-only")
            return None

    def stop(self) -> None:
        self.source.close()


class EndofuseSyncOp(EndofuseOperator):
    """Inputs `wli` (drives) and `nbi` (never gates) -> output `pair` (a `SyncedPair`).

    Every WLI frame is paired by endofuse's `Synchroniser`: the NBI frame nearest
    in time within `tolerance` s (default half a WLI period) is `paired`, within
    `staleness` s (default three periods) `stale`, otherwise WLI-only (`missing`).
    Frames are endofuse `Frame`s or HWC uint8 numpy/cupy/holoscan Tensors/one-
    tensor maps in `channel_order` (RGB/RGBA or BGR), stamped on arrival; CUDA
    frames stay on the GPU. NBI frames replaced at the one-slot `nbi` port
    before they were read are counted in `nbi_dropped` (frames from
    `EndofuseSourceOp` carry a sequence number; other frames cannot be counted).
    """

    def __init__(self, fragment, *args, wli_fps: float = 30.0, tolerance: float | None = None,
                 staleness: float | None = None, channel_order: str = "rgb", **kwargs) -> None:
        default = SyncPolicy.for_fps(wli_fps)
        tolerance = default.tolerance_s if tolerance is None else float(tolerance)
        staleness = max(default.staleness_s, tolerance) if staleness is None else float(staleness)
        self.sync = Synchroniser(SyncPolicy(tolerance, staleness))
        self.channel_order = check_channel_order(channel_order)
        self._wli = FrameStamper("WLI", self.channel_order)
        self._nbi = FrameStamper("NBI", self.channel_order)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec) -> None:
        spec.input("wli")
        # One slot, newest wins: a multi-slot port logs an error on every empty read, and the
        # synchroniser pairs with the newest NBI frame anyway when both streams share a rate.
        spec.input("nbi", policy=IOSpec.QueuePolicy.POP)
        # Ticks on either input (WLI still drives: NBI alone never makes a pair): an NBI frame is taken into the
        # synchroniser when it arrives, so a lossless WLI source can wait until the NBI frame it pairs with is in.
        spec.or_combine_port_conditions(["wli", "nbi"])
        spec.output("pair")

    def _compute(self, op_input, op_output) -> None:
        started = now()
        nbi = op_input.receive("nbi")  # NBI first: arrival stamps then precede the WLI frame's
        for value in (nbi if isinstance(nbi, (tuple, list)) else () if nbi is None else (nbi,)):
            self.sync.add_nbi(self._nbi(value)[0])
        value = op_input.receive("wli")
        if value is None:
            return  # an NBI frame alone
        frame, order = self._wli(value)
        trace = FrameTrace(frame.capture_time, {"capture": frame.read_ms})
        pairing = self.sync.pair(frame)
        if pairing is None:
            return  # not newer than the previous WLI frame: counted by the synchroniser
        trace.add("sync", max(started, frame.capture_time))
        threads = [t for t in (frame.extras.get("thread"), threading.get_ident()) if t is not None]
        op_output.emit(SyncedPair(pairing, order, trace, threads), "pair")

    @property
    def nbi_dropped(self) -> int:
        """NBI frames that never reached the synchroniser (replaced at the port by a newer one)."""
        return self._nbi.lost

    @property
    def wli_dropped(self) -> int:
        return self._wli.lost

    @property
    def nbi_seen(self) -> int:
        """NBI frames of an `EndofuseSourceOp` this op has accounted for (taken in, or lost at the port)."""
        return self._nbi.seen


def resolve_engine(engine, backend: str = "auto", device: str | None = None, model: str = "tiny",
                   server: str | None = None, token: str | None = None, deadline_ms: float = 100.0):
    """An engine object as it is, or `open_engine` on a path / None (the bundled demo weights) or a server."""
    if engine is not None and hasattr(engine, "infer"):
        return engine
    from endofuse.realtime.engines import open_engine

    if server is not None:
        # the path / model name only say what the room preprocesses for while the server is away at start
        return open_engine(engine, model_name=model, server=server, token=token, deadline_ms=deadline_ms)

    if engine is not None and not os.path.exists(engine):
        raise EndofuseError(f"engine file '{engine}': no such file")
    return open_engine(engine, backend=backend, device=device, model_name=model)


class EndofuseInferenceOp(EndofuseOperator):
    """Input `pair` -> output `segmented`: preprocess both frames, run the engine (NBI missing: WLI-only path).

    `engine`: an engine from `open_engine` (OpenVINO, ONNX Runtime, TensorRT,
    torch), a checkpoint/model path, or None for the bundled demo weights.
    `classifier`: a `realtime.classifier.FrameClassifier` or its file; it
    classifies the WLI frame's model input right after segmentation, as in the
    native pipeline. Frames on the GPU are preprocessed there (device.py).
    `server` (with `token`, `deadline_ms`): run the network on an `endofuse serve`; the op then never
    waits for it and passes on the newest fresh mask, or none ("AI OFFLINE"/"AI LATE" in the HUD).
    """

    def __init__(self, fragment, *args, engine=None, backend: str = "auto", device: str | None = None,
                 model: str = "tiny", warmup: bool = True, classifier=None, server: str | None = None,
                 token: str | None = None, deadline_ms: float = 100.0, **kwargs) -> None:
        self.engine = resolve_engine(engine, backend, device, model, server, token, deadline_ms)
        if classifier is not None and not callable(classifier):
            from endofuse.realtime.classifier import FrameClassifier

            classifier = FrameClassifier.open(classifier)
        self.classifier = classifier
        self._warmup = warmup
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec) -> None:
        spec.input("pair")
        spec.output("segmented")

    def start(self) -> None:
        if self._warmup:
            self.engine.warmup()

    def _compute(self, op_input, op_output) -> None:
        pair: SyncedPair = op_input.receive("pair")
        pair.threads.append(threading.get_ident())
        size = tuple(self.engine.input_size)
        started = now()
        if pair.endoscope is None:
            wli = model_input(pair.wli.image, size, self.engine)
            nbi = None if pair.nbi is None else model_input(pair.nbi.image, size, self.engine)
            t_pre = pair.trace.add("preprocess", started)
        else:  # one endoscope stream: the endoscope op made the crops' inputs; NBI and HOLD frames get no mask
            wli, nbi, t_pre = pair.endoscope.wli_input, pair.endoscope.nbi_input, started
        if wli is None:
            op_output.emit(Segmented(pair, None, self.engine), "segmented")
            return
        remote = None
        if hasattr(self.engine, "infer_latest"):  # served: the newest fresh mask, never a wait
            logits, remote = self.engine.infer_latest(wli, nbi)
        else:
            logits = self.engine.infer(wli, nbi)
        t_infer = pair.trace.add("infer", t_pre)
        classification = None
        if self.classifier is not None:
            classification = self.classifier(wli)
            pair.trace.add("classify", t_infer)
        op_output.emit(Segmented(pair, logits, self.engine, classification, remote), "segmented")


PLACEMENT = "_placement"  # FrameResult.extras key: (the mask's frame, its Drawn), read by EndofuseRecorderOp


class EndofuseOverlayOp(EndofuseOperator):
    """Input `segmented` -> outputs `overlay` and `result`; either may be left unconnected.

    Between the engine and the overlay it runs endofuse's output stage
    (`realtime.output.mask_stage.MaskStage`, the native pipeline's): the
    stabiliser (`stabilise` off | ema | flow, or a `StabiliseConfig`, with
    `on_threshold`, `off_threshold`, `min_frames`; default off, the per-frame
    mask), the overlay timing (`overlay_timing` sync | live: live draws the
    newest mask on the newest captured frame, which `EndofuseApp` wires in as
    `newest`) and, for one endoscope stream, the mask only inside the content
    area and none on NBI/HOLD frames. `fps` is the frame rate the temporal
    metrics count per minute with.

    `overlay`: a tensor map {"overlay": HxWx3 uint8} in the channel order the
    frames came in (for `HolovizOp(tensors=[dict(name="overlay", type="color")])`
    or a recorder). `result`: an `endofuse.realtime.FrameResult` (overlay in
    BGR, mask, mode, latency, timings, nbi_index, the overlay's age in
    `extras`; with a classifier, `class` and `confidence`). For frames that
    arrived on the GPU, the overlay tensor and the result's overlay, mask and
    frame are CUDA tensors.

    An output with no receiver would stop the operator forever, so both ports
    send without waiting for the receiver: under a multi-threaded scheduler a
    slow receiver can then miss frames. Name the ports you connect in
    `backpressure` (e.g. `("result",)`) and they wait for their receiver instead.
    """

    def __init__(self, fragment, *args, alpha: float = 0.45, hud: bool = True, contour: bool = True,
                 stabilise: str | StabiliseConfig = "off", on_threshold: float = _STABILISE.on_threshold,
                 off_threshold: float = _STABILISE.off_threshold, min_frames: int = _STABILISE.min_frames,
                 overlay_timing: str = "sync", fps: float = 30.0, frame_code: bool = False,
                 backpressure: tuple[str, ...] | list[str] = (), **kwargs) -> None:
        unknown = set(backpressure) - {"overlay", "result"}
        if unknown:
            raise ValueError(f"backpressure names output ports 'overlay'/'result', got {sorted(unknown)}")
        self.backpressure = tuple(backpressure)
        self.style = OverlayStyle(alpha=alpha, contour=contour, hud=hud)
        if not isinstance(stabilise, StabiliseConfig):
            stabilise = StabiliseConfig(str(stabilise), on_threshold, off_threshold, min_frames)
        # frame_code: the WLI source stamps frame codes; the recorder reads them back from the pixels it writes
        self.mask_stage = MaskStage(stabilise, overlay_timing, fps, read_codes=frame_code)
        self.newest: Callable[[], object] | None = None  # the newest captured frame (live timing), set by the app
        self.origin: Callable[[], float | None] | None = None  # the timeline's start, for FrameResult time_s
        self._done: list[float] = []
        self.frames = self.handoffs = 0  # hand-offs: consecutive operators of a frame's path on different threads
        self.threads: set[int] = set()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec) -> None:
        spec.input("segmented")
        for port in ("overlay", "result"):
            if port not in self.backpressure:
                spec.output(port).condition(ConditionType.NONE)
            else:
                spec.output(port)

    def _compute(self, op_input, op_output) -> None:
        item: Segmented = op_input.receive("segmented")
        pair, trace, frame = item.pair, item.pair.trace, item.pair.wli
        threads = [*pair.threads, threading.get_ident()]
        self.frames += 1
        self.handoffs += sum(a != b for a, b in zip(threads, threads[1:], strict=False))
        self.threads.update(threads)
        decided = pair.endoscope
        if decided is None:
            mode = FUSED if pair.nbi is not None else WLI_ONLY
        else:
            mode = decided.mode
            self.mask_stage.endoscope = pair.endoscope_stage
        drawn = self.mask_stage.draw(mode, item.logits, frame, trace, self.style,  # a GPU frame stays there
                                     lambda mode, age_line: self._hud(mode, item, trace, age_line),
                                     None if self.newest is None else self.newest(), decided, item.remote)
        ready = now()
        self._done = (self._done + [ready])[-30:]
        skew = pair.pairing.skew_s
        result = FrameResult(frame.index, drawn.overlay, drawn.mask, drawn.mode, trace.stages_ms,
                             trace.latency_ms(ready), drawn.shown.image, pair.pairing.status,
                             None if skew is None else skew * 1000.0,
                             None if pair.nbi is None else pair.nbi.index)
        origin = None if self.origin is None else self.origin()
        if origin is not None:
            result.extras["time_s"] = frame.sync_time - origin  # on the recording's timeline for files
        result.extras.update(drawn.extras())
        if decided is not None:
            result.nbi_index = decided.nbi_index
        if item.classification is not None:
            result.extras.update({"class": item.classification.label, "confidence": item.classification.confidence})
        result.extras[PLACEMENT] = (frame, drawn)
        op_output.emit({"overlay": from_bgr(drawn.overlay, pair.channel_order)}, "overlay")
        op_output.emit(result, "result")

    def _hud(self, mode: str, item: Segmented, trace: FrameTrace, overlay_age: str = "") -> HudInfo:
        times, engine = self._done, item.engine
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
        line = "" if item.classification is None else item.classification.hud_line()
        return HudInfo(mode, engine_label(engine), getattr(engine, "model_label", ""), fps, trace.latency_ms(), line,
                       overlay_age)
