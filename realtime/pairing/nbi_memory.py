"""Pairing one endoscope stream with itself: the remembered NBI view (pure logic, no threads).

A processor sends one output, switched by hand between WLI and NBI. While the
clinician looks in NBI, `NbiMemory` keeps the newest good NBI frame and, frozen
at the switch, the last good WLI frame seen before it (the view anchor). Back in
WLI, each WLI frame is decided:

* `FUSED-MEMORY`: fused with the remembered NBI frame, when that frame is at
  most `max_age_s` old (capture time, so a stalled source ages it too) and the
  view gate passes: the current WLI frame still looks like the anchor
  (`view_similarity` >= `view_gate`; a gate of 0 is off);
* `WLI-ONLY`: no NBI seen yet, memory too old, or the view changed (the reason
  is in the decision and counted);
* `NBI` for NBI frames (no mask: the model segments WLI frames, and its NBI
  input is the paired view, not the image to draw on);
* `HOLD` for transition frames and frames the quality gate rejects: no new
  mask, and the memory and anchor are left as they were.

When the stream starts in NBI there is no WLI frame before the switch; the
first good WLI frame after it becomes the anchor (the switch itself takes a
fraction of a second, so that frame shows the view just looked at in NBI).
The view measure is the Pearson correlation of small blurred grey thumbnails:
cheap, blind to brightness and contrast changes, and falls fast when the scope
points elsewhere (evidence for the default in benchmarks/view_gate.py).
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass

import cv2
import numpy as np

from endofuse.errors import InvalidOptionError
from endofuse.realtime.segment import WLI_ONLY
from endofuse.realtime.tracing import percentiles

FUSED_MEMORY = "FUSED-MEMORY"
NBI_VIEW = "NBI"
HOLD = "HOLD"

# Why a WLI frame went WLI-only (counted in `summary()`).
NEVER_SEEN, TOO_OLD, VIEW_CHANGED = "nbi_never_seen", "memory_too_old", "view_changed"

DEFAULT_NBI_MEMORY_S = 10.0
DEFAULT_VIEW_GATE = 0.75
THUMBNAIL_SIDE = 32


@dataclass(frozen=True)
class MemoryPolicy:
    """`max_age_s`: oldest usable NBI memory; `view_gate`: least WLI-vs-anchor similarity (0: gate off)."""

    max_age_s: float = DEFAULT_NBI_MEMORY_S
    view_gate: float = DEFAULT_VIEW_GATE

    def __post_init__(self) -> None:
        if not self.max_age_s >= 0:
            raise InvalidOptionError(f"--nbi-memory must be >= 0 seconds, got {self.max_age_s}")
        if not 0.0 <= self.view_gate <= 1.0:
            raise InvalidOptionError(f"--view-gate must be in [0, 1] (0 disables it), got {self.view_gate}")


@dataclass(frozen=True)
class MemoryDecision:
    """The decision for one frame; `nbi` is the remembered NBI frame (FUSED-MEMORY only)."""

    mode: str
    nbi: object | None = None
    age_s: float | None = None  # current time - remembered NBI frame's time
    similarity: float | None = None  # current WLI view vs the anchor (when a memory was there to gate)
    reason: str = ""  # why WLI-ONLY or HOLD


def view_signature(content_bgr: np.ndarray) -> np.ndarray:
    """A 32x32 blurred grey thumbnail of the central 70 %, zero mean, unit norm: what `view_similarity` compares."""
    h, w = content_bgr.shape[:2]
    # The central 70 % lies inside a round or octagonal image: the black corners, the same in every
    # view, would otherwise make any two views look alike.
    inner = content_bgr[int(h * 0.15):h - int(h * 0.15), int(w * 0.15):w - int(w * 0.15)]
    inner = inner if inner.size else content_bgr
    # A regular 4x4 sample per thumbnail cell (nearest), then its average: ~0.05 ms at any size, where
    # an area resize of the whole crop costs ~0.6 ms at 1080p; the blur below hides the aliasing.
    side = 4 * THUMBNAIL_SIDE
    sample = cv2.resize(inner, (side, side), interpolation=cv2.INTER_NEAREST)
    small = cv2.resize(sample, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA)
    thumb = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    # The blur makes a small shift of the scope a small change of the signature.
    thumb = cv2.GaussianBlur(thumb.astype(np.float32), (5, 5), 1.0).ravel()
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    return thumb / norm if norm > 1e-6 else thumb  # a flat image: all zeros, similar to nothing


def view_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two signatures, in [-1, 1]; 0 when either image is flat."""
    return float(np.dot(a, b))


class NbiMemory:
    """Decides each frame's mode from its modality, quality and view (see the module docstring)."""

    def __init__(self, policy: MemoryPolicy = MemoryPolicy()) -> None:
        self.policy = policy
        self._nbi = None  # the remembered NBI frame (any object; the pipeline passes its prepared frame)
        self._nbi_time: float | None = None
        self._anchor: np.ndarray | None = None  # signature of the last good WLI frame before the switch
        self._last_wli: np.ndarray | None = None
        self._in_nbi = False  # the last good frame was NBI
        self._last_time: float | None = None
        self.counts = {FUSED_MEMORY: 0, WLI_ONLY: 0, NBI_VIEW: 0, HOLD: 0, NEVER_SEEN: 0, TOO_OLD: 0,
                       VIEW_CHANGED: 0, "nbi_looks": 0, "out_of_order": 0}
        self.ages_ms = array("d")

    def update(self, modality: str, time_s: float, frame=None, view: np.ndarray | None = None,
               usable: bool = True) -> MemoryDecision:
        """One frame: its stable modality ("WLI", "NBI" or anything else = transition), capture time,
        the frame to remember if NBI, its `view_signature` (needed for WLI frames when the gate is on)
        and whether the quality gate passed."""
        if self._last_time is not None and time_s < self._last_time:
            self.counts["out_of_order"] += 1  # never age a memory backwards: hold the stray frame
            return self._count(MemoryDecision(HOLD, reason="out_of_order"))
        self._last_time = time_s
        if modality not in ("WLI", "NBI") or not usable:
            return self._count(MemoryDecision(HOLD, reason="transition" if usable else "quality"))
        if modality == "NBI":
            if not self._in_nbi:  # a new NBI look: freeze the anchor, start a new memory
                self._in_nbi = True
                self._anchor = self._last_wli
                self.counts["nbi_looks"] += 1
            self._nbi, self._nbi_time = frame, time_s
            return self._count(MemoryDecision(NBI_VIEW))
        return self._count(self._wli(time_s, view))

    def _wli(self, time_s: float, view: np.ndarray | None) -> MemoryDecision:
        gate = self.policy.view_gate > 0
        if gate and view is None:
            raise ValueError("a WLI frame needs its view_signature while the view gate is on")
        if self._in_nbi and self._anchor is None:
            self._anchor = view  # started in NBI: the first WLI frame after the switch is the anchor
        self._in_nbi = False
        self._last_wli = view
        if self._nbi is None:
            self.counts[NEVER_SEEN] += 1
            return MemoryDecision(WLI_ONLY, reason=NEVER_SEEN)
        age = time_s - self._nbi_time
        if age > self.policy.max_age_s:
            self.counts[TOO_OLD] += 1
            return MemoryDecision(WLI_ONLY, age_s=age, reason=TOO_OLD)
        similarity = view_similarity(view, self._anchor) if gate else None
        if gate and similarity < self.policy.view_gate:
            self.counts[VIEW_CHANGED] += 1
            return MemoryDecision(WLI_ONLY, age_s=age, similarity=similarity, reason=VIEW_CHANGED)
        self.ages_ms.append(age * 1000.0)
        return MemoryDecision(FUSED_MEMORY, self._nbi, age, similarity)

    def _count(self, decision: MemoryDecision) -> MemoryDecision:
        self.counts[decision.mode] += 1
        return decision

    def summary(self) -> dict:
        """Counts per mode, the WLI-ONLY reasons, NBI looks and the memory-age percentiles of fused frames."""
        c = self.counts
        return {
            "modes": {m: c[m] for m in (FUSED_MEMORY, WLI_ONLY, NBI_VIEW, HOLD)},
            "wli_only_reasons": {r: c[r] for r in (NEVER_SEEN, TOO_OLD, VIEW_CHANGED)},
            "view_gate_fallbacks": c[VIEW_CHANGED],
            "nbi_looks": c["nbi_looks"],
            "out_of_order": c["out_of_order"],
            "memory_age_ms": percentiles(self.ages_ms),
            "nbi_memory_s": self.policy.max_age_s,
            "view_gate": self.policy.view_gate,
        }
