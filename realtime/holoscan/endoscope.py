"""`EndofuseEndoscopeOp`: one endoscope stream (WLI and NBI switched by hand on the processor) in a Holoscan graph.

    EndofuseSourceOp --frame--> EndofuseEndoscopeOp --pair--> EndofuseInferenceOp --segmented--> EndofuseOverlayOp

It takes the place of `EndofuseSyncOp`: the processor's single output carries
both modes, so each frame is paired with itself (a side-by-side layout) or with
the NBI view remembered from the last NBI look. Each `compute` runs
`pairing.endoscope.EndoscopeStage.prepare`, the stage the native capture thread
runs (content area, modality, quality gate, NBI memory, the crops' model
inputs), so both runtimes decide the same mode for the same frame.
"""
from __future__ import annotations

import threading

import torch

from endofuse.errors import EndofuseError
from endofuse.realtime.holoscan._runtime import import_holoscan

import_holoscan()

from endofuse.realtime.holoscan.frames import FrameStamper, SyncedPair, check_channel_order  # noqa: E402
from endofuse.realtime.holoscan.operators import EndofuseOperator  # noqa: E402
from endofuse.realtime.pairing.endoscope import EndoscopeConfig, EndoscopeStage  # noqa: E402
from endofuse.realtime.pairing.sync import Pairing  # noqa: E402
from endofuse.realtime.tracing import FrameTrace, now  # noqa: E402

_DEFAULT = EndoscopeConfig()


class EndofuseEndoscopeOp(EndofuseOperator):
    """Input `frame` (one endoscope stream) -> output `pair` (a `SyncedPair` with the frame's `EndoscopeFrame`).

    `nbi_memory_s`, `view_gate`, `content_area`, `layout`: the options of
    `run --endoscope` (`--nbi-memory`, `--view-gate`, `--content-area`,
    `--layout`; defaults as there), or `config`, a whole
    `pairing.endoscope.EndoscopeConfig`.
    `input_size` (H, W) and `device`: the engine's, for the crops' model inputs
    (`EndofuseApp` takes them from its engine). Frames are endofuse `Frame`s or
    HWC uint8 numpy/cupy/holoscan Tensors/one-tensor maps in `channel_order`; the
    analysis runs on the host, so a frame that arrived on the GPU is copied
    there once. `latest`: (newest frame, its decision), what
    `--overlay-timing live` draws on; `stage.summary()`: the report's `endoscope`.
    """

    def __init__(self, fragment, *args, nbi_memory_s: float = _DEFAULT.nbi_memory_s,
                 view_gate: float = _DEFAULT.view_gate, content_area: str = _DEFAULT.content_area,
                 layout: str = _DEFAULT.layout, config: EndoscopeConfig | None = None,
                 input_size: tuple[int, int] = (256, 256), device: str | None = None, channel_order: str = "rgb",
                 **kwargs) -> None:
        if config is None:  # checked before any frame: one line on a bad value
            config = EndoscopeConfig(float(nbi_memory_s), float(view_gate), str(content_area), str(layout))
        elif not isinstance(config, EndoscopeConfig):
            raise EndofuseError("endoscope: config must be an EndoscopeConfig (in YAML give nbi_memory_s, view_gate, "
                                "content_area, layout)")
        self.stage = EndoscopeStage(config)
        self.input_size, self.device = tuple(input_size), device
        self.channel_order = check_channel_order(channel_order)
        self._frames = FrameStamper("endoscope", self.channel_order)
        self.latest: tuple | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec) -> None:
        spec.input("frame")
        spec.output("pair")

    def _compute(self, op_input, op_output) -> None:
        frame, order = self._frames(op_input.receive("frame"))
        if isinstance(frame.image, torch.Tensor):  # the stage's analysis and crops are numpy
            frame.image = frame.image.cpu().numpy()
        trace = FrameTrace(frame.capture_time, {"capture": frame.read_ms})
        started = now()
        decided = self.stage.prepare(frame, self.input_size, self.device)
        self.latest = (frame, decided)
        trace.stages_ms["analyse"] = decided.analyse_ms
        trace.add("preprocess", started + decided.analyse_ms / 1000)  # preprocess = the crops' resize only
        threads = [t for t in (frame.extras.get("thread"), threading.get_ident()) if t is not None]
        pairing = Pairing(frame, None, decided.status, None)
        op_output.emit(SyncedPair(pairing, order, trace, threads, endoscope=decided, endoscope_stage=self.stage),
                       "pair")

    @property
    def wli_dropped(self) -> int:
        """Frames of an `EndofuseSourceOp` replaced at the `frame` port before they were read (as the sync op's)."""
        return self._frames.lost
