"""Triton kernels for the live GPU path: frame preprocessing and the segmentation overlay.

Both follow the CPU twins in `frames.py` tap for tap (float32 half-pixel
coordinates, the same blend order), so the two paths agree to float rounding.
"""
from __future__ import annotations

import numpy as np
import torch

from endofuse.kernels._backend import launch_options, tl, triton

PIXELS_PER_PROGRAM = 256


@triton.jit
def _taps(dst, scale, n_in):
    """Half-pixel bilinear taps of output coordinate `dst`: (index0, index1, weight of index1)."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    index0 = tl.minimum(src.to(tl.int32), n_in - 1)  # truncation == floor for src >= 0
    index1 = tl.minimum(index0 + 1, n_in - 1)
    return index0, index1, src - index0.to(tl.float32)


@triton.jit
def _preprocess_kernel(
    SRC_ptr, META_ptr, SCALE_ptr, OUT_ptr, out_h, out_w, BLOCK: tl.constexpr,
):
    """Resize + BGR->RGB + /255 + HWC->CHW for frame `program_id(0)` of a packed batch.

    SRC_ptr: all frames' uint8 HWC bytes back to back; META_ptr: int64 (N, 3)
    rows (byte offset, height, width); SCALE_ptr: float32 (N, 2) rows
    (height / out_h, width / out_w); OUT_ptr: float32 (N, 3, out_h, out_w).
    """
    frame = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = pixels < out_h * out_w
    y, x = pixels // out_w, pixels % out_w
    offset = tl.load(META_ptr + frame * 3)
    in_h = tl.load(META_ptr + frame * 3 + 1).to(tl.int32)
    in_w = tl.load(META_ptr + frame * 3 + 2).to(tl.int32)
    y0, y1, wy = _taps(y, tl.load(SCALE_ptr + frame * 2), in_h)
    x0, x1, wx = _taps(x, tl.load(SCALE_ptr + frame * 2 + 1), in_w)
    base = SRC_ptr + offset
    plane = out_h * out_w
    out = OUT_ptr + frame.to(tl.int64) * 3 * plane + pixels
    for channel in tl.static_range(3):
        bgr = 2 - channel  # RGB output channel c reads BGR byte 2 - c
        a = tl.load(base + (y0 * in_w + x0) * 3 + bgr, mask=ok, other=0).to(tl.float32)
        b = tl.load(base + (y0 * in_w + x1) * 3 + bgr, mask=ok, other=0).to(tl.float32)
        c = tl.load(base + (y1 * in_w + x0) * 3 + bgr, mask=ok, other=0).to(tl.float32)
        d = tl.load(base + (y1 * in_w + x1) * 3 + bgr, mask=ok, other=0).to(tl.float32)
        top = a * (1 - wx) + b * wx
        bottom = c * (1 - wx) + d * wx
        tl.store(out + channel * plane, (top * (1 - wy) + bottom * wy) * (1.0 / 255.0), mask=ok)


def preprocess_triton(frames: list, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """All frames in one launch: pack their uint8 bytes on `device`, resize into (N, 3, H, W)."""
    out_h, out_w = size
    tensors = [torch.as_tensor(f).to(device, non_blocking=True).contiguous() for f in frames]
    packed = torch.cat([t.reshape(-1) for t in tensors])
    offsets = np.cumsum([0] + [t.numel() for t in tensors[:-1]])
    meta = torch.tensor([[int(o), t.shape[0], t.shape[1]] for o, t in zip(offsets, tensors)], dtype=torch.int64)
    # float32 ratios from float64 divisions, as numpy's np.float32(n_in / n_out) on the CPU path
    scales = torch.tensor([[t.shape[0] / out_h, t.shape[1] / out_w] for t in tensors], dtype=torch.float32)
    out = torch.empty((len(tensors), 3, out_h, out_w), dtype=torch.float32, device=device)
    grid = (len(tensors), triton.cdiv(out_h * out_w, PIXELS_PER_PROGRAM))
    _preprocess_kernel[grid](
        packed, meta.to(device, non_blocking=True), scales.to(device, non_blocking=True), out, out_h, out_w,
        BLOCK=PIXELS_PER_PROGRAM, **launch_options(4),
    )
    return out


@triton.jit
def _is_foreground(L_ptr, y, x, n_classes, log_h, log_w, scale_y, scale_x):
    """argmax over classes of the bilinearly upsampled logits at frame pixel (y, x) is not class 0.

    Strict '>' keeps the first maximum, like numpy/torch argmax.
    """
    y0, y1, wy = _taps(y, scale_y, log_h)
    x0, x1, wx = _taps(x, scale_x, log_w)
    best = tl.full(y.shape, float("-inf"), dtype=tl.float32)
    best_class = tl.zeros(y.shape, dtype=tl.int32)
    for cls in range(n_classes):
        plane = L_ptr + cls * log_h * log_w
        top = tl.load(plane + y0 * log_w + x0).to(tl.float32) * (1 - wx) + tl.load(plane + y0 * log_w + x1).to(tl.float32) * wx
        bottom = tl.load(plane + y1 * log_w + x0).to(tl.float32) * (1 - wx) + tl.load(plane + y1 * log_w + x1).to(tl.float32) * wx
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
    when a background pixel inside the frame lies within RADIUS (Chebyshev); the
    neighbours' argmax is recomputed here instead of a second launch.
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


def overlay_triton(frame: torch.Tensor, logits: torch.Tensor, alpha: float, color: tuple[int, int, int]):
    """(image, mask) on the logits' device; logits (C, h, w), frame uint8 (H, W, 3) on the same device."""
    from endofuse.kernels.frames import CONTOUR_PX

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
        RADIUS=CONTOUR_PX, BLOCK=PIXELS_PER_PROGRAM, **launch_options(4),
    )
    return image, mask
