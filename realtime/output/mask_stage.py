"""The output side of a frame after inference, shared by the native pipeline and the Holoscan overlay op:

    logits -> stabiliser -> overlay timing (the frame to draw on) -> mask + overlay + HUD -> temporal metrics

    stage = MaskStage(StabiliseConfig(), "sync", fps=30, endoscope=None)
    drawn = stage.draw(mode, logits, frame, trace, style, hud, newest=capture.latest)  # drawn.mode: as drawn
    ... sinks get drawn.overlay / drawn.mask; drawn.extras() goes into FrameResult.extras ...
    stage.record_output(frame, drawn, overlay_image, ready)   # the overlay's age, frame codes read back

Two inputs: the whole WLI frame. One endoscope stream (`endoscope`, a
`pairing.endoscope.EndoscopeStage`): the stabiliser runs on the content area's
crop (the logits are the crop's) and only on frames that carry a mask; a HOLD
frame does not feed it, an NBI frame or a new content area restarts it
(docs/pipeline.md, "The stabiliser on one endoscope stream").
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from endofuse.realtime.output.overlay import HudInfo, OverlayStyle
from endofuse.realtime.output.stabilise import StabiliseConfig, StabiliseStage
from endofuse.realtime.output.timing import OverlayTiming
from endofuse.realtime.pairing.nbi_memory import FUSED_MEMORY, NBI_VIEW
from endofuse.realtime.segment import FUSED, WLI_ONLY, finish_frame
from endofuse.realtime.tracing import now

MASK_MODES = (FUSED, FUSED_MEMORY, WLI_ONLY)  # the modes whose frames carry a mask


@dataclass
class Drawn:
    """One frame out of the stage: its mask and overlay, the frame they are drawn on and the overlay's age."""

    mode: str
    mask: np.ndarray
    overlay: object  # BGR image (numpy, or a torch tensor for a frame kept on the GPU)
    shown: object  # the `Frame` drawn on: the mask's own frame (sync) or the newest captured one (live)
    age: tuple[int, float]  # (frames, ms) between the mask's frame and `shown`
    has_mask: bool  # False on an endoscope stream's NBI and HOLD frames
    decided: object = None  # one endoscope stream: the frame's EndoscopeFrame
    remote: object = None  # a served engine (realtime/serve/client.py): where the mask came from, or why none

    def extras(self) -> dict:
        """What `FrameResult.extras` carries for --log and the report (the same keys on every runtime)."""
        out = {}
        if self.has_mask:  # NBI/HOLD frames of an endoscope stream carry no mask, so no overlay age
            out.update(shown_index=self.shown.index, overlay_age_frames=self.age[0], overlay_age_ms=self.age[1])
        d = self.decided
        if d is not None:
            out.update(modality=d.modality, nbi_age_s=d.nbi_age_s, view_similarity=d.similarity,
                       quality_flags=d.quality_flags, content_area=d.area)
        r = self.remote
        if r is not None:  # where the mask came from and its age (benchmarks/rooms.py, the report's `remote`)
            out.update(mask_source=r.source, remote_state=r.state, remote_age_frames=r.age_frames,
                       remote_age_ms=r.age_ms)
        return out


class MaskStage:
    """The stabiliser, the overlay timing and the drawing of one run (see the module docstring)."""

    def __init__(self, stabilise: StabiliseConfig, timing: str, fps: float, read_codes: bool = False,
                 endoscope=None, labels: Callable[[int], np.ndarray] | None = None) -> None:
        self.config = stabilise
        self.stabiliser = StabiliseStage(stabilise, fps)
        self.timing = OverlayTiming(timing, read_codes=read_codes)
        self.endoscope, self.labels = endoscope, labels  # labels(index): the true mask of a WLI frame (evaluate)
        self._stabilised_area = None  # the content area the stabiliser's state belongs to (one endoscope stream)

    def draw(self, mode: str, logits, frame, trace, style: OverlayStyle, hud: Callable[[str, str], HudInfo],
             newest=None, decided=None, remote=None) -> Drawn:
        """Stabilise `logits` of `frame` (its `mode`, decided before inference), place them (overlay timing),
        draw mask, overlay and HUD.

        `hud(mode, age_line)`: the HUD of this frame, given the mode as drawn; `newest`: the newest captured
        frame (two inputs: a `Frame`; one endoscope stream: `(Frame, EndoscopeFrame)`), drawn on with
        `--overlay-timing live`; `decided`: the frame's `EndoscopeFrame` (one endoscope stream); `remote`: a
        served engine's answer state (its mask's age replaces the overlay-age line; with no fresh mask the frame
        goes out bare as AI OFFLINE / AI LATE, `Drawn.mode`, and the stabiliser skips it). Stage times go into
        `trace`.
        """
        started = now()
        if remote is not None and decided is None and logits is None:
            mode = remote.hud_mode
            logits, flow, shown, age = None, None, frame, (0, 0.0)
        else:
            logits, flow, shown, age = self._stabilise(logits, frame, decided, newest)
        trace.add("stabilise", started)
        has_mask = logits is not None
        age_line = self.timing.hud_line(age, self.timing.mode) if has_mask else ""
        if remote is not None:
            age_line = remote.hud_line()

        def hud_info() -> HudInfo:
            info = hud(mode, age_line)
            return info if decided is None else self.endoscope.hud_info(decided, info)

        if decided is None:
            mask, overlay, post_ms, overlay_ms = finish_frame(logits, shown.image, style, hud_info)
        else:  # the mask and overlay only inside the content area; none on NBI/HOLD frames
            mask, overlay, post_ms, overlay_ms = self.endoscope.finish(decided, logits, shown.image, style, hud_info)
        trace.stages_ms["postprocess"], trace.stages_ms["overlay"] = post_ms, overlay_ms
        started = now()
        if has_mask:  # the temporal metrics are over the frames that carry a mask
            label = None if self.labels is None else self.labels(shown.index)
            if decided is None:
                self.stabiliser.record(host(mask), flow, label)
            else:  # at the content area's crop, where the flow was taken
                crop = decided.area.crop
                self.stabiliser.record(crop(mask), flow, None if label is None else crop(label))
        trace.add("temporal_metrics", started)
        return Drawn(mode, mask, overlay, shown, age, has_mask, decided, remote)

    def record_output(self, frame, drawn: Drawn, output_image, ready: float) -> None:
        """The overlay's age of a frame that reached the sinks; with frame codes, the code read from `output_image`
        (the pixels written out)."""
        self.timing.record(frame, drawn.shown, drawn.age, output_image, ready, has_overlay=drawn.has_mask)

    def _stabilise(self, logits, frame, decided, newest) -> tuple:
        """(logits to draw, flow, the frame to draw on, the overlay's age)."""
        warp = self.config.mode == "flow"
        if decided is None:
            logits, flow = self.stabiliser(logits, host(frame.image))
            return self._placed(logits, flow, frame, newest, warp)
        if decided.mode == NBI_VIEW or decided.area != self._stabilised_area:
            self.stabiliser.reset()
            self._stabilised_area = None if decided.mode == NBI_VIEW else decided.area
        if logits is None:  # NBI / HOLD: no mask
            return None, None, frame, (0, 0.0)
        area = decided.area
        logits, flow = self.stabiliser(logits, area.crop(frame.image))
        # live timing: the newest captured frame, if it carries a mask in the same content area (never a mask on an
        # NBI or HOLD frame, nor across a layout change); otherwise the mask's own frame
        target = newest[0] if newest is not None and newest[1].area == area and newest[1].mode in MASK_MODES \
            else None
        return self._placed(logits, flow, frame, target, warp, view=area.crop)

    def _placed(self, logits, flow, frame, newest, warp: bool, view=None) -> tuple:
        view = view or host  # the flow for a warp is taken on the host, for frames kept on the GPU too
        logits, shown, age = self.timing.place(logits, frame, newest, warp, view)
        return logits, flow, shown, age

    def summary(self) -> dict:
        """The report's `temporal` and `overlay` sections."""
        return {"temporal": self.stabiliser.summary(), "overlay": self.timing.summary()}


def host(image):
    """A numpy array for the flow and the temporal metrics (a frame kept on the GPU is copied to the host)."""
    return image.cpu().numpy() if isinstance(image, torch.Tensor) else image
