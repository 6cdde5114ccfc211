"""The pipeline's operators, each one job on its own thread, wired by named ports (queues).

    CaptureOp(WLI) --out--> [wli] --\\
                                     InferenceOp --out--> [results] --> output stage (Pipeline.__iter__)
    CaptureOp(NBI) --out--> [nbi] --/

`CaptureOp` reads a source and preprocesses each frame (so resizing overlaps
with inference); `InferenceOp` pairs WLI with NBI through the `Synchroniser`
and runs the engine. An operator that fails reports the error to the
pipeline and closes its output port, so everything downstream drains and
stops; a lost NBI camera only ends the NBI stream (WLI-only from then on).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from endofuse.realtime.input.sources import Frame, Source, SourceLost
from endofuse.realtime.pairing.sync import Pairing, Synchroniser
from endofuse.realtime.queues import BLOCK, Closed, FrameQueue, Timeout
from endofuse.realtime.segment import preprocess
from endofuse.realtime.tracing import FrameTrace, now


@dataclass
class Prepared:
    """A captured frame, its model input and its trace; what flows on capture ports."""

    frame: Frame
    model_input: object  # numpy (1, 3, H, W) float32, or a CUDA tensor
    trace: FrameTrace
    enqueued: float = 0.0
    endoscope: object = None  # one endoscope stream: the stage's EndoscopeFrame (mode, crops' model inputs)

    @property
    def index(self) -> int:
        return self.frame.index

    @property
    def sync_time(self) -> float:
        return self.frame.sync_time


@dataclass
class Inferred:
    """A WLI frame after the engine: its pairing decision and logits."""

    wli: Prepared
    pairing: Pairing
    logits: object
    enqueued: float = 0.0
    classification: object = None  # a realtime.classifier.Classification when the pipeline has a classifier
    remote: object = None  # a serve.client.RemoteFrame when the engine runs on `endofuse serve`


class Operator:
    """A named thread body; `fail` hands an exception to the pipeline (it re-raises it in the caller)."""

    def __init__(self, name: str, fail: Callable[[BaseException], None]) -> None:
        self.name, self.fail = name, fail
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._guarded, name=f"endofuse-{self.name}", daemon=True)
        self.thread.start()

    def _guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - any failure must reach the caller, not die with the thread
            self.fail(exc)
        finally:
            self.finish()

    def run(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Close output ports (always runs)."""


class CaptureOp(Operator):
    """Source -> preprocess -> `out`. Stops after `max_frames` frames when given.

    With an `endoscope` stage (`pairing.endoscope.EndoscopeStage`, one stream carrying both modes) the
    stage analyses each frame in order and preprocesses only the crops it will segment.
    """

    def __init__(self, name: str, source: Source, out: FrameQueue, input_size: tuple[int, int], device,
                 fail, max_frames: int | None = None, lost: Callable[[Exception], None] | None = None,
                 endoscope=None) -> None:
        super().__init__(name, fail)
        self.source, self.out, self.input_size, self.device = source, out, input_size, device
        self.max_frames, self.lost, self.endoscope = max_frames, lost, endoscope
        self.frames = 0
        self.latest: Frame | None = None  # the newest frame read: what `--overlay-timing live` draws on
        # one endoscope stream: (newest frame, its EndoscopeFrame), set together once analysed
        self.latest_endoscope: tuple | None = None
        self.sizes_seen: set[tuple[int, int]] = set()

    def run(self) -> None:
        lossless = self.out.policy == BLOCK
        while self.max_frames is None or self.frames < self.max_frames:
            if lossless and not self.out.wait_for_space():
                return
            try:
                frame = self.source.next_frame()
            except SourceLost as exc:
                if self.lost is None:
                    raise
                self.lost(exc)  # e.g. the NBI camera: the pipeline goes on WLI-only
                return
            if frame is None:
                return
            self.latest = frame
            trace = FrameTrace(frame.capture_time, {"capture": frame.read_ms})
            started = now()
            model_input = decided = None
            if self.endoscope is None:
                model_input = preprocess(frame.image, self.input_size, self.device)
            else:
                decided = self.endoscope.prepare(frame, self.input_size, self.device)
                self.latest_endoscope = (frame, decided)
                trace.stages_ms["analyse"] = decided.analyse_ms
                started += decided.analyse_ms / 1000  # preprocess = the crops' resize only
            trace.add("preprocess", started)
            self.sizes_seen.add(frame.image.shape[:2])
            self.frames += 1
            if not self.out.put(Prepared(frame, model_input, trace, enqueued=now(), endoscope=decided)):
                return  # closed downstream: the pipeline is stopping

    def finish(self) -> None:
        self.out.close()


class InferenceOp(Operator):
    """WLI port + NBI port -> synchroniser -> engine -> `out`.

    `lossless` (recorded sources played as fast as possible): waits until the
    NBI stream has reached each WLI frame's time, so pairing does not depend
    on thread timing. Live: waits at most `live_wait_s` after the WLI capture
    for an NBI frame that has not reached the WLI time yet (a frame captured at
    the same instant is usually a millisecond behind), then pairs with what it has.
    """

    def __init__(self, engine, wli_in: FrameQueue, nbi_in: FrameQueue | None, out: FrameQueue,
                 sync: Synchroniser, lossless: bool, fail, live_wait_s: float = 0.0, classifier=None) -> None:
        super().__init__("inference", fail)
        self.engine, self.wli_in, self.nbi_in, self.out = engine, wli_in, nbi_in, out
        self.classifier = classifier  # optional: classifies the WLI frame right after segmentation
        self.sync, self.lossless, self.live_wait_s = sync, lossless, live_wait_s
        if nbi_in is None:
            sync.end_nbi()

    def run(self) -> None:
        while True:
            try:
                item = self.wli_in.get()
            except Closed:
                return
            item.trace.add("queue", item.enqueued)
            if item.endoscope is None:
                self._collect_nbi(item)
                started = now()
                pairing = self.sync.pair(item)
                if pairing is None:
                    continue  # a WLI frame not newer than the last one: counted by the synchroniser
                wli_input = item.model_input
                nbi_input = pairing.nbi.model_input if pairing.nbi is not None else None
            else:  # one endoscope stream: already paired (with itself) by the capture stage
                started = now()
                decided = item.endoscope
                pairing = Pairing(item, None, decided.status, None)
                wli_input, nbi_input = decided.wli_input, decided.nbi_input
            logits = remote = None  # NBI and HOLD frames of an endoscope stream get no mask
            if wli_input is not None and hasattr(self.engine, "infer_latest"):
                # a served engine never holds the frame: the newest fresh mask, or None (realtime/serve/client.py)
                logits, remote = self.engine.infer_latest(wli_input, nbi_input, wait=self.lossless)
                item.trace.add("infer", started)
            elif wli_input is not None:
                logits = self.engine.infer(wli_input, nbi_input)
                item.trace.add("infer", started)
            classification = None
            if self.classifier is not None and wli_input is not None:
                started = now()
                classification = self.classifier(wli_input)
                item.trace.add("classify", started)
            if not self.out.put(Inferred(item, pairing, logits, enqueued=now(), classification=classification,
                                         remote=remote)):
                return

    def _collect_nbi(self, wli: Prepared) -> None:
        if self.nbi_in is None or self.sync.nbi_ended:
            return
        started = now()
        try:
            while (nbi := self.nbi_in.get_nowait()) is not None:
                self.sync.add_nbi(nbi)
            if self.lossless:
                while not self.sync.ready_for(wli.sync_time):
                    self.sync.add_nbi(self.nbi_in.get())
            else:
                deadline = wli.frame.capture_time + self.live_wait_s
                while not self.sync.ready_for(wli.sync_time) and now() < deadline:
                    self.sync.add_nbi(self.nbi_in.get(timeout=deadline - now()))
        except Timeout:
            pass
        except Closed:
            self.sync.end_nbi()
        wli.trace.add("sync", started)

    def finish(self) -> None:
        self.out.close()
