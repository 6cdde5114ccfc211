"""Processor output layouts: one image, or two views side by side (a "twin" / split-screen mode).

`--layout single | side-by-side | side-by-side:nbi-left | side-by-side:nbi-right`.
In a side-by-side layout the processor shows the same view in WLI and NBI at
once, one per half of the frame: a true simultaneous pair. Which half is NBI is
given (`:nbi-left`, `:nbi-right`) or read per frame from the halves' colour
(`read_modality`: the NBI half has the lower R/G ratio).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from endofuse.errors import InvalidInputError, InvalidOptionError
from endofuse.realtime.modality import NBI, WLI, read_modality

SINGLE = "single"
SIDE_BY_SIDE = "side-by-side"
LAYOUTS = (SINGLE, SIDE_BY_SIDE, f"{SIDE_BY_SIDE}:nbi-left", f"{SIDE_BY_SIDE}:nbi-right")
MIN_RG_SPLIT = 1.2  # halves not labelled WLI/NBI are told apart only if their R/G ratios differ by this factor


@dataclass(frozen=True)
class Layout:
    """`kind`: "single" or "side-by-side"; `nbi_side`: "left", "right" or None (read from the halves' colour)."""

    kind: str
    nbi_side: str | None = None

    @property
    def side_by_side(self) -> bool:
        return self.kind == SIDE_BY_SIDE

    def spec(self) -> str:
        return self.kind if self.nbi_side is None else f"{self.kind}:nbi-{self.nbi_side}"


def parse_layout(spec: str) -> Layout:
    """`--layout` text -> Layout; anything else raises InvalidOptionError listing the valid values."""
    text = str(spec).strip().lower()
    if text not in LAYOUTS:
        raise InvalidOptionError(f"--layout must be one of {', '.join(LAYOUTS)}, got {spec!r}")
    kind, _, side = text.partition(":")
    return Layout(kind, side.removeprefix("nbi-") or None)


def split_side_by_side(frame: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(wli_half, nbi_half) of a side-by-side frame, as views (the left half gets the odd column)."""
    if not layout.side_by_side:
        raise InvalidOptionError(f"split_side_by_side needs a side-by-side layout, got {layout.spec()!r}")
    w = frame.shape[1]
    left, right = frame[:, :(w + 1) // 2], frame[:, (w + 1) // 2:]
    side = layout.nbi_side or _nbi_side(left, right)
    return (right, left) if side == "left" else (left, right)


def _nbi_side(left: np.ndarray, right: np.ndarray) -> str:
    a, b = read_modality(left), read_modality(right)
    if {a.label, b.label} == {WLI, NBI}:
        return "left" if a.label == NBI else "right"
    if np.isfinite(a.rg_ratio) and np.isfinite(b.rg_ratio):
        if a.rg_ratio * MIN_RG_SPLIT <= b.rg_ratio:
            return "left"
        if b.rg_ratio * MIN_RG_SPLIT <= a.rg_ratio:
            return "right"
    raise InvalidInputError(f"side-by-side frame: cannot tell which half is NBI (left {a.label} R/G {a.rg_ratio:.2f}, "
                            f"right {b.label} R/G {b.rg_ratio:.2f}); give --layout side-by-side:nbi-left or "
                            f"side-by-side:nbi-right")
