"""How the overlay looks (`OverlayStyle`) and the HUD drawn on it.

The mask, blend and contour themselves are `endofuse.kernels.overlay` (CPU twin
or Triton kernel), called from `segment.finish_frame`; this module adds the
small HUD box with the mode, engine, model and live numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from endofuse.errors import InvalidOptionError
from endofuse.kernels.mask_overlay import DEFAULT_ALPHA, DEFAULT_COLOR

# BGR; the endoscope modes (realtime/pairing/nbi_memory.py) too: a mask from a remembered NBI view in
# teal, no mask (NBI view, HOLD) in grey.
MODE_COLORS = {"FUSED": (0, 200, 0), "WLI-ONLY": (0, 165, 255), "FUSED-MEMORY": (200, 200, 0),
               "NBI": (200, 200, 200), "HOLD": (160, 160, 160),
               "AI OFFLINE": (0, 0, 255), "AI LATE": (0, 110, 255)}  # served rooms without a fresh mask


@dataclass(frozen=True)
class OverlayStyle:
    """How the overlay looks; `contour=False` and `hud=False` leave only the blend."""

    alpha: float = DEFAULT_ALPHA
    color: tuple[int, int, int] = DEFAULT_COLOR
    contour: bool = True  # a 2-px inner contour in full colour
    hud: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidOptionError(f"overlay alpha must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True)
class HudInfo:
    """What the HUD shows: mode, engine and model label, and live numbers when known."""

    mode: str
    engine: str
    model_label: str = ""
    fps: float | None = None
    latency_ms: float | None = None
    classification: str = ""  # "label 93%" when the pipeline runs a frame classifier
    overlay_age: str = ""  # "overlay age 2 fr 66 ms" (live timing) or "overlay sync"
    mode_note: str = ""  # after the mode: the NBI memory's age, why a frame is held

    def lines(self) -> list[str]:
        numbers = []
        if self.fps is not None and self.fps == self.fps:  # skip NaN
            numbers.append(f"{self.fps:5.1f} fps")
        if self.latency_ms is not None:
            numbers.append(f"{self.latency_ms:5.1f} ms")
        mode = f"{self.mode} ({self.mode_note})" if self.mode_note else self.mode
        lines = [f"{mode}  " + "  ".join(numbers) if numbers else mode, self.engine]
        if self.model_label:
            lines.append(self.model_label)
        if self.classification:
            lines.append(self.classification)
        if self.overlay_age:
            lines.append(self.overlay_age)
        return lines


FONT = cv2.FONT_HERSHEY_SIMPLEX


def hud_scale(shape: tuple[int, ...]) -> float:
    """Text scale that follows the frame: readable on 480p, not huge on 1080p."""
    return max(0.35, min(shape[:2]) / 720)


def hud_rectangle(shape: tuple[int, ...], lines: list[str]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the HUD box for these lines on a frame of `shape`; nothing is drawn outside it."""
    scale = hud_scale(shape)
    line_h = int(22 * scale) + 1
    text_w = max(cv2.getTextSize(text, FONT, 0.55 * scale, 1)[0][0] for text in lines)
    width = min(shape[1], text_w + int(14 * scale) + 1)
    return 0, 0, width, min(shape[0], line_h * len(lines) + int(8 * scale) + 1)


def draw_hud(image: np.ndarray, info: HudInfo) -> tuple[int, int, int, int]:
    """Draw a dark translucent box with the HUD text top-left, in place; returns its rectangle."""
    lines = info.lines()
    x0, y0, x1, y1 = hud_rectangle(image.shape, lines)
    box = image[y0:y1, x0:x1]
    # darken to 1/8: a processor output's own bright on-screen text under the box must not read through the HUD
    box[:] = box >> 3
    scale = hud_scale(image.shape)
    line_h = int(22 * scale) + 1
    for i, text in enumerate(lines):
        color = MODE_COLORS.get(info.mode, (255, 255, 255)) if i == 0 else (235, 235, 235)
        origin = (int(6 * scale), int(4 * scale) + line_h * (i + 1) - int(5 * scale))
        # Drawn on the box view: text can never spill outside the rectangle.
        cv2.putText(box, text, origin, FONT, 0.55 * scale, color, 1, cv2.LINE_AA)
    return x0, y0, x1, y1


def draw_hud_tensor(image: torch.Tensor, info: HudInfo) -> None:
    """`draw_hud` on a tensor in place: only the HUD box goes to the host and back."""
    x0, y0, x1, y1 = hud_rectangle(tuple(image.shape), info.lines())
    host = np.empty(tuple(image.shape), np.uint8)  # untouched outside the box (draw_hud writes only inside it)
    host[y0:y1, x0:x1] = image[y0:y1, x0:x1].cpu().numpy()
    draw_hud(host, info)
    image[y0:y1, x0:x1] = torch.from_numpy(host[y0:y1, x0:x1]).to(image.device)
