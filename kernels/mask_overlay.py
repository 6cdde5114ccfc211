"""Segmentation mask and overlay: class logits at model resolution -> (overlay image, mask) at the frame's size.

The one implementation of the output stage, used by evaluation and the live
path. Logits are upsampled bilinearly (half-pixel centres, `bilinear.py`) and
argmax'ed (foreground = any class but 0; the first maximum wins ties); the
frame is alpha-blended with `color` on the foreground (rounded half up) and a
2-px inner contour is painted in full `color` (the frame edge is not a
boundary). `contour=False`, or alpha 0, leaves out the contour.

Layers: the Triton kernel (`_overlay_kernel`, one launch per frame), its host
launcher (`overlay_triton`), the CPU twin (`overlay_cpu`: OpenCV/numpy, with
`foreground_mask_cpu` and `paint` usable alone) and the public `overlay`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import torch

from endofuse.kernels._backend import launch_options, tl, triton, use_triton
from endofuse.kernels.bilinear import taps

Frame = np.ndarray | torch.Tensor
CONTOUR_PX = 2  # contour thickness: foreground pixels within 2 px (Chebyshev) of background
DEFAULT_ALPHA = 0.45
DEFAULT_COLOR = (0, 255, 0)  # BGR green: reads on both the reddish WLI mucosa and the teal NBI
PIXELS_PER_PROGRAM = 256


class Overlay(NamedTuple):
    image: Frame  # BGR uint8 (H, W, 3), same kind (numpy / torch) as the input frame
    mask: Frame  # uint8 (H, W) in {0, 1}


# ---- Triton kernels ----
@triton.jit
def _is_foreground(L_ptr, y, x, n_classes, log_h, log_w, scale_y, scale_x):
    """argmax over classes of the bilinearly upsampled logits at frame pixel (y, x) is not class 0.

    Strict '>' keeps the first maximum, like numpy/torch argmax.
    """
    y0, y1, wy = taps(y, scale_y, log_h)
    x0, x1, wx = taps(x, scale_x, log_w)
    best = tl.full(y.shape, float("-inf"), dtype=tl.float32)
    best_class = tl.zeros(y.shape, dtype=tl.int32)
    for cls in range(n_classes):
        plane = L_ptr + cls * log_h * log_w
        a = tl.load(plane + y0 * log_w + x0).to(tl.float32)
        b = tl.load(plane + y0 * log_w + x1).to(tl.float32)
        c = tl.load(plane + y1 * log_w + x0).to(tl.float32)
        d = tl.load(plane + y1 * log_w + x1).to(tl.float32)
        top = a * (1 - wx) + b * wx
        bottom = c * (1 - wx) + d * wx
        value = top * (1 - wy) + bottom * wy
        better = value > best
        best = tl.where(better, value, best)
        best_class = tl.where(better, cls, best_class)
    return best_class != 0


@triton.jit
def _overlay_kernel(
    FRAME_ptr, L_ptr, IMAGE_ptr, MASK_ptr,
    height, width, n_classes, log_h, log_w, scale_y, scale_x,
    keep, alpha, blue, green, red,
    RADIUS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Mask, alpha blend and inner contour for a block of frame pixels.

    FRAME_ptr/IMAGE_ptr: uint8 (height, width, 3) BGR; L_ptr: (n_classes, log_h, log_w)
    logits; MASK_ptr: uint8 (height, width). A foreground pixel is on the contour
    when a background pixel inside the frame lies within RADIUS (Chebyshev; 0: no
    contour); the neighbours' argmax is recomputed here instead of a second launch.
    keep = 1 - alpha, computed on the host like the CPU path.
    """
    pixels = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = pixels < height * width
    y = tl.where(ok, pixels // width, 0)
    x = tl.where(ok, pixels % width, 0)
    fg = _is_foreground(L_ptr, y, x, n_classes, log_h, log_w, scale_y, scale_x)
    rim = tl.zeros([BLOCK], dtype=tl.int1)
    for dy in tl.static_range(-RADIUS, RADIUS + 1):
        for dx in tl.static_range(-RADIUS, RADIUS + 1):
            ny, nx = y + dy, x + dx
            inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
            ny, nx = tl.minimum(tl.maximum(ny, 0), height - 1), tl.minimum(tl.maximum(nx, 0), width - 1)
            neighbour_fg = _is_foreground(L_ptr, ny, nx, n_classes, log_h, log_w, scale_y, scale_x)
            rim = rim | (inside & (neighbour_fg == 0))
    rim = rim & fg
    tl.store(MASK_ptr + pixels, fg.to(tl.uint8), mask=ok)
    for channel in tl.static_range(3):
        if channel == 0:
            color = blue
        elif channel == 1:
            color = green
        else:
            color = red
        src = tl.load(FRAME_ptr + pixels * 3 + channel, mask=ok, other=0).to(tl.float32)
        mixed = tl.minimum(tl.maximum(tl.floor(src * keep + color * alpha + 0.5), 0.0), 255.0)
        value = tl.where(rim, color, tl.where(fg, mixed, src))
        tl.store(IMAGE_ptr + pixels * 3 + channel, value.to(tl.uint8), mask=ok)


# ---- host launcher ----
def overlay_triton(frame: torch.Tensor, logits: torch.Tensor, alpha: float, color: tuple[int, int, int],
                   contour: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, mask) on the logits' device; logits (C, h, w), frame uint8 (H, W, 3) on the same device."""
    height, width = frame.shape[:2]
    n_classes, log_h, log_w = logits.shape
    frame, logits = frame.contiguous(), logits.contiguous()
    image = torch.empty_like(frame)
    mask = torch.empty((height, width), dtype=torch.uint8, device=frame.device)
    grid = (triton.cdiv(height * width, PIXELS_PER_PROGRAM),)
    _overlay_kernel[grid](
        frame, logits, image, mask, height, width, n_classes, log_h, log_w,
        float(np.float32(log_h / height)), float(np.float32(log_w / width)),
        float(np.float32(1.0 - alpha)), float(np.float32(alpha)), float(color[0]), float(color[1]), float(color[2]),
        RADIUS=CONTOUR_PX if contour else 0, BLOCK=PIXELS_PER_PROGRAM, **launch_options(4),
    )
    return image, mask


# ---- CPU twin ----
def foreground_mask_cpu(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) logits -> uint8 (H, W) mask: argmax after bilinear upsampling is not class 0.

    argmax != 0 exactly when some class c > 0 beats class 0 strictly (the first
    maximum wins ties). With two classes that is up(l1) > up(l0), and bilinear
    upsampling is linear, so one plane, up(l1 - l0) > 0, is upsampled instead of
    two (a third of the work; the decision can differ only where the two
    upsampled logits agree to float rounding, as between the kernel and this twin).
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape[0] == 2:
        margin = cv2.resize(logits[1] - logits[0], (width, height), interpolation=cv2.INTER_LINEAR)
        return (margin > 0).view(np.uint8)
    channels_last = np.ascontiguousarray(logits.transpose(1, 2, 0))
    up = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    return (up[:, :, 1:].max(axis=2) > up[:, :, 0]).view(np.uint8)


def inner_contour(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with background within CONTOUR_PX (Chebyshev); the frame edge is not background."""
    side = 2 * CONTOUR_PX + 1
    eroded = cv2.erode(mask, np.ones((side, side), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return mask & (1 - eroded)


def blend_table(alpha: float, color: Sequence[int]) -> np.ndarray:
    """(1, 256, 3) uint8 lookup: floor(v * (1 - alpha) + color * alpha + 0.5) per BGR channel, in float32
    exactly as the Triton kernel computes it (the blended value depends only on the pixel's byte)."""
    values = np.arange(256, dtype=np.float32)[:, None]
    mixed = values * np.float32(1.0 - alpha) + np.asarray(color, np.float32)[None, :] * np.float32(alpha)
    return np.floor(mixed + np.float32(0.5)).clip(0, 255).astype(np.uint8)[None]


def paint(frame: np.ndarray, mask: np.ndarray, alpha: float = DEFAULT_ALPHA, color: Sequence[int] = DEFAULT_COLOR,
          contour: bool = True) -> np.ndarray:
    """A copy of BGR `frame` with uint8 {0, 1} `mask` blended in `color` and (unless off, or alpha 0) its contour.

    Works on the mask's bounding box only (a table lookup and two masked copies),
    so the cost follows the tumour's size rather than the frame's.
    """
    if frame.shape[:2] != mask.shape:
        raise ValueError(f"mask {mask.shape} does not match frame {frame.shape[:2]}")
    mask = mask.astype(np.uint8, copy=False)
    out = frame.copy()
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return out
    box = (slice(y, y + h), slice(x, x + w))
    cv2.copyTo(cv2.LUT(frame[box], blend_table(alpha, color)), mask[box], out[box])
    if contour and alpha > 0:
        # The contour needs each mask pixel's CONTOUR_PX neighbourhood: erode a crop that wide
        # around the box (cut only by the frame's edge, which is not background).
        top, left = max(0, y - CONTOUR_PX), max(0, x - CONTOUR_PX)
        around = mask[top : y + h + CONTOUR_PX, left : x + w + CONTOUR_PX]
        rim = inner_contour(np.ascontiguousarray(around))[y - top : y - top + h, x - left : x - left + w]
        solid = np.empty((h, w, 3), np.uint8)
        solid[:] = np.asarray(color, np.uint8)
        cv2.copyTo(solid, np.ascontiguousarray(rim), out[box])
    return out


def overlay_cpu(frame: np.ndarray, logits: np.ndarray, alpha: float, color: Sequence[int],
                contour: bool = True) -> Overlay:
    height, width = frame.shape[:2]
    mask = foreground_mask_cpu(logits, height, width)
    return Overlay(paint(frame, mask, alpha, color, contour), mask)


# ---- public op ----
def overlay(
    frame_uint8: Frame,
    logits: torch.Tensor | np.ndarray,
    alpha: float = DEFAULT_ALPHA,
    color: Sequence[int] = DEFAULT_COLOR,
    *,
    contour: bool = True,
    backend: str = "auto",
) -> Overlay:
    """Segmentation overlay of `logits` ((C, h, w) or (1, C, h, w)) on a BGR frame -> Overlay(image, mask).

    The work runs where `logits` live (Triton on CUDA); the image and mask come
    back in the frame's kind: numpy in, numpy out; torch in, torch on the frame's device.
    """
    logits = _check_overlay_args(frame_uint8, logits, alpha, color)
    draw_contour = bool(contour) and float(alpha) > 0
    if use_triton(logits, backend):
        frame_t = torch.as_tensor(frame_uint8).to(logits.device)
        image, mask = overlay_triton(frame_t, logits, float(alpha), tuple(int(c) for c in color), draw_contour)
    else:
        image, mask = overlay_cpu(_to_numpy(frame_uint8), _to_numpy(logits.float()), float(alpha), color,
                                  draw_contour)
    if isinstance(frame_uint8, torch.Tensor):
        return Overlay(torch.as_tensor(image).to(frame_uint8.device), torch.as_tensor(mask).to(frame_uint8.device))
    return Overlay(_to_numpy(image), _to_numpy(mask))


def _check_overlay_args(frame: Frame, logits, alpha: float, color: Sequence[int]) -> torch.Tensor:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"overlay expects a BGR uint8 (H, W, 3) frame, got {tuple(frame.shape)} {frame.dtype}")
    logits = torch.as_tensor(logits)
    if logits.dim() == 4 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.dim() != 3 or logits.shape[0] < 2:
        raise ValueError(f"overlay expects logits (C>=2, h, w) or (1, C, h, w), got {tuple(logits.shape)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if len(color) != 3 or not all(0 <= int(c) <= 255 for c in color):
        raise ValueError(f"color must be three ints in [0, 255] (BGR), got {color!r}")
    return logits


def _to_numpy(array: Frame) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
