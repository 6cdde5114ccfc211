"""One endoscope stream -> model inputs: content area, modality, quality gate, NBI memory (the capture stage).

`EndoscopeStage.prepare(frame)` runs in the capture thread, once per frame in
order (the trackers and the memory are stateful):

    frame -> FrameAnalyzer (content area, crop, modality, quality gate)
          -> view signature (WLI frames) -> NbiMemory
          -> model inputs of the crops that will be segmented

`single` layout: the mode comes from `NbiMemory` (FUSED-MEMORY, WLI-ONLY, NBI,
HOLD). `side-by-side` layouts: both views are on every frame, so each good frame
is a true simultaneous pair (FUSED); a frame the quality gate rejects is HOLD.
`finish` turns the engine's logits back into a full output frame: the mask and
its overlay only inside the content area's shape, and no mask at all on NBI
and HOLD frames (the last good mask is never drawn on a frame it does not
belong to).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from endofuse.realtime.input.content_area import ContentArea, ContentAreaTracker
from endofuse.realtime.input.frame_analysis import FrameAnalyzer
from endofuse.realtime.input.layout import parse_layout, split_side_by_side
from endofuse.realtime.input.quality import QualityThresholds
from endofuse.realtime.modality import NBI, TRANSITION, WLI
from endofuse.realtime.output.overlay import HudInfo, OverlayStyle, draw_hud
from endofuse.realtime.pairing.nbi_memory import (
    DEFAULT_NBI_MEMORY_S,
    DEFAULT_VIEW_GATE,
    FUSED_MEMORY,
    HOLD,
    NBI_VIEW,
    MemoryPolicy,
    NbiMemory,
    view_signature,
)
from endofuse.realtime.pairing.sync import MISSING, PAIRED
from endofuse.realtime.segment import FUSED, WLI_ONLY, finish_frame, preprocess
from endofuse.realtime.tracing import now

# The pairing status a mode is counted under in the report (`paired`, `nbi_missing`, ...).
STATUS_BY_MODE = {FUSED: PAIRED, FUSED_MEMORY: "memory", WLI_ONLY: MISSING, NBI_VIEW: "no_mask", HOLD: "no_mask"}
MODES = (FUSED, FUSED_MEMORY, WLI_ONLY, NBI_VIEW, HOLD)


@dataclass(frozen=True)
class EndoscopeConfig:
    """The options of `run --endoscope` (`--nbi-memory`, `--view-gate`, `--content-area`, `--layout`)."""

    nbi_memory_s: float = DEFAULT_NBI_MEMORY_S
    view_gate: float = DEFAULT_VIEW_GATE
    content_area: str = "auto"
    layout: str = "single"
    switch_frames: int = 3
    quality: QualityThresholds = field(default_factory=QualityThresholds)

    def __post_init__(self) -> None:  # every option checked before a frame is read
        MemoryPolicy(self.nbi_memory_s, self.view_gate)
        parse_layout(self.layout)
        ContentAreaTracker(self.content_area)


@dataclass
class Remembered:
    """The NBI frame in memory: its index, crop and (made on first use) model input."""

    index: int
    crop: np.ndarray
    model_input: object = None


@dataclass
class EndoscopeFrame:
    """What the stage decided for one frame; `wli_input` is None when the frame gets no mask."""

    mode: str
    modality: str
    area: ContentArea  # the segmented view's content area, in output-frame pixels
    wli_input: object = None
    nbi_input: object = None
    nbi_index: int | None = None
    nbi_age_s: float | None = None
    similarity: float | None = None
    quality_flags: tuple[str, ...] = ()
    analyse_ms: float = 0.0  # content area + modality + quality gate + view signature

    @property
    def status(self) -> str:
        return STATUS_BY_MODE[self.mode]


def _offset(frame: np.ndarray, view: np.ndarray) -> tuple[int, int]:
    """(x, y) of a view's first pixel inside `frame` (the halves of a side-by-side frame are views)."""
    start = view.__array_interface__["data"][0] - frame.__array_interface__["data"][0]
    y, rest = divmod(start, frame.strides[0])
    if not np.shares_memory(frame, view) or not 0 <= y < frame.shape[0]:
        raise ValueError("split_side_by_side must return views of the frame")
    return rest // frame.strides[1], y


class EndoscopeStage:
    """The capture-side analysis of one endoscope stream (see the module docstring)."""

    def __init__(self, config: EndoscopeConfig = EndoscopeConfig()) -> None:
        self.config = config
        self.layout = parse_layout(config.layout)
        self.side_by_side = self.layout.side_by_side
        # content area + modality + quality gate of the (WLI) view; in side-by-side layouts only the
        # content area of the NBI half is needed
        self.analyzer = FrameAnalyzer(config.content_area, config.switch_frames, config.quality)
        self.nbi_areas = ContentAreaTracker(config.content_area) if self.side_by_side else None
        self.memory = NbiMemory(MemoryPolicy(config.nbi_memory_s, config.view_gate))
        self.quality_held = 0  # settled frames held because the quality gate flagged them
        self.frames = 0
        self._shape_masks: dict[ContentArea, np.ndarray] = {}

    # -- capture thread ----------------------------------------------------
    def prepare(self, frame, input_size: tuple[int, int], device=None) -> EndoscopeFrame:
        """Analyse one captured frame (a `sources.Frame`) and make the model inputs it needs."""
        started = now()
        self.frames += 1
        if self.side_by_side:
            decided, wli_crop, nbi_crop = self._side_by_side(frame.image)
        else:
            decided, wli_crop, nbi_crop = self._single(frame)
        decided.analyse_ms = (now() - started) * 1000
        if decided.mode in (FUSED, FUSED_MEMORY, WLI_ONLY):
            decided.wli_input = preprocess(wli_crop, input_size, device)
        if decided.mode == FUSED:
            decided.nbi_input = preprocess(nbi_crop, input_size, device)
        elif decided.mode == FUSED_MEMORY:
            remembered = nbi_crop
            if remembered.model_input is None:  # made once per NBI frame in memory, when first fused
                remembered.model_input = preprocess(remembered.crop, input_size, device)
            decided.nbi_input = remembered.model_input
        return decided

    def _single(self, frame) -> tuple[EndoscopeFrame, np.ndarray, object]:
        analysis = self.analyzer.analyze(frame.image)
        area, modality = analysis.area, analysis.modality
        crop = area.crop(frame.image)
        settled = modality != TRANSITION  # a transition frame is held whatever its quality
        flags = analysis.quality.flags if settled else ()
        usable = not settled or analysis.quality.ok
        view = view_signature(crop) if modality == WLI and usable and self.memory.policy.view_gate > 0 else None
        remembered = Remembered(frame.index, crop) if modality == NBI else None
        decision = self.memory.update(modality, frame.sync_time, remembered, view, usable)
        if decision.reason == "quality":
            self.quality_held += 1
        nbi = decision.nbi
        return (EndoscopeFrame(decision.mode, modality, area, nbi_index=None if nbi is None else nbi.index,
                               nbi_age_s=decision.age_s, similarity=decision.similarity, quality_flags=flags),
                crop, nbi)

    def _side_by_side(self, image: np.ndarray) -> tuple[EndoscopeFrame, np.ndarray, np.ndarray]:
        wli_half, nbi_half = split_side_by_side(image, self.layout)
        x, y = _offset(image, wli_half)
        analysis = self.analyzer.analyze(wli_half)
        area, quality = analysis.area, analysis.quality
        wli_crop, nbi_crop = area.crop(wli_half), self.nbi_areas.update(nbi_half).crop(nbi_half)
        mode = FUSED if quality.ok else HOLD
        self.quality_held += not quality.ok
        placed = dataclasses.replace(area, x=area.x + x, y=area.y + y)  # in output-frame pixels
        return EndoscopeFrame(mode, WLI, placed, quality_flags=quality.flags), wli_crop, nbi_crop

    # -- output thread -----------------------------------------------------
    def finish(self, decided: EndoscopeFrame, logits, image: np.ndarray, style: OverlayStyle,
               hud=None) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(mask, overlay, postprocess ms, overlay ms) at the output frame's size; the mask only inside the
        content area's shape, none on NBI/HOLD frames."""
        started = now()
        mask = np.zeros(image.shape[:2], np.uint8)
        overlay = image.copy()
        if logits is not None:
            area = decided.area
            crop_mask, crop_overlay, _, _ = finish_frame(logits, np.ascontiguousarray(area.crop(image)), style)
            inside = self._shape_mask(area)
            area.crop(mask)[...] = crop_mask * inside
            np.copyto(area.crop(overlay), crop_overlay, where=inside[..., None])
        post = now()
        if style.hud and hud is not None:
            draw_hud(overlay, hud())
        return mask, overlay, (post - started) * 1000, (now() - post) * 1000

    def _shape_mask(self, area: ContentArea) -> np.ndarray:
        """`area.shape_mask()`, kept for the current area: areas change rarely, frames come 30 a second."""
        if area not in self._shape_masks:
            self._shape_masks = {area: area.shape_mask()}
        return self._shape_masks[area]

    @staticmethod
    def hud_info(decided: EndoscopeFrame, base: HudInfo) -> HudInfo:
        """The pipeline's HUD for this frame, with the endoscope mode and its note."""
        return dataclasses.replace(base, mode=decided.mode, mode_note=hud_note(decided))

    # -- report ------------------------------------------------------------
    def summary(self) -> dict:
        memory = self.memory.summary()
        analysis = self.analyzer.summary()  # content_area, modality, quality (flag counts over every frame)
        analysis["quality"]["held"] = self.quality_held
        return {
            "layout": self.config.layout,
            **analysis,
            "switches": self.analyzer.modality.switches,
            "memory": {k: memory[k] for k in ("nbi_memory_s", "view_gate", "memory_age_ms", "view_gate_fallbacks",
                                              "wli_only_reasons", "nbi_looks")},
        }


def hud_note(decided: EndoscopeFrame) -> str:
    """What the HUD adds after the mode: the memory's age, or why there is no mask."""
    if decided.mode == FUSED_MEMORY:
        return f"NBI {decided.nbi_age_s:.1f} s ago"
    if decided.mode == HOLD:
        return ",".join(decided.quality_flags) or "transition"
    return ""
