"""Frame preprocessing: BGR uint8 frames (any sizes) -> one RGB float32 [0, 1] NCHW batch.

The one implementation of the model's input convention, used by training,
evaluation, INT8 calibration and the live path. Bilinear with half-pixel
centres and no antialias (`endofuse.kernels.bilinear`), computed from the
uint8 bytes in float32 (no rounding back to uint8), then BGR->RGB and /255.

Layers: the Triton kernel (`_preprocess_kernel`), its host launcher
(`preprocess_triton`), the CPU twin (`preprocess_cpu`, numpy, tap for tap the
same arithmetic) and the public `preprocess`, which picks one.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from endofuse.kernels._backend import launch_options, tl, triton, use_triton
from endofuse.kernels.bilinear import as_size, source_coords, taps

Frame = np.ndarray | torch.Tensor
INV_255 = np.float32(1.0 / 255.0)
PIXELS_PER_PROGRAM = 256


# ---- Triton kernel ----
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
    y0, y1, wy = taps(y, tl.load(SCALE_ptr + frame * 2), in_h)
    x0, x1, wx = taps(x, tl.load(SCALE_ptr + frame * 2 + 1), in_w)
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


# ---- host launcher ----
def preprocess_triton(frames: list[Frame], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """All frames in one launch: pack their uint8 bytes on `device`, resize into (N, 3, H, W)."""
    out_h, out_w = size
    tensors = [torch.as_tensor(f).to(device, non_blocking=True).contiguous() for f in frames]
    packed = torch.cat([t.reshape(-1) for t in tensors])
    offsets = np.cumsum([0] + [t.numel() for t in tensors[:-1]])
    meta = torch.tensor([[int(o), t.shape[0], t.shape[1]] for o, t in zip(offsets, tensors, strict=True)],
                        dtype=torch.int64)
    # float32 ratios from float64 divisions, as numpy's np.float32(n_in / n_out) on the CPU path
    scales = torch.tensor([[t.shape[0] / out_h, t.shape[1] / out_w] for t in tensors], dtype=torch.float32)
    out = torch.empty((len(tensors), 3, out_h, out_w), dtype=torch.float32, device=device)
    grid = (len(tensors), triton.cdiv(out_h * out_w, PIXELS_PER_PROGRAM))
    _preprocess_kernel[grid](
        packed, meta.to(device, non_blocking=True), scales.to(device, non_blocking=True), out, out_h, out_w,
        BLOCK=PIXELS_PER_PROGRAM, **launch_options(4),
    )
    return out


# ---- CPU twin ----
def resize_bilinear(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (h, w, C) -> float32 (height, width, C), values still in [0, 255].

    Gathers only the rows and columns the output needs (cheaper than converting
    the whole full-HD frame to float first) and blends them in the kernel's order.
    """
    h, w, channels = frame.shape
    y0, y1, wy = source_coords(h, height)
    x0, x1, wx = source_coords(w, width)
    # Columns as (x, channel) byte indices of a row: the blends then run on contiguous (height, width*C) arrays.
    within = np.arange(channels)
    cols0, cols1 = (x0[:, None] * channels + within).ravel(), (x1[:, None] * channels + within).ravel()
    rows = frame.reshape(h, w * channels)
    wx = np.repeat(wx, channels)[None, :]
    keep_x, wy, keep_y = 1 - wx, wy[:, None], 1 - wy[:, None]

    def horizontal(picked_rows: np.ndarray) -> np.ndarray:  # a * (1 - wx) + b * wx, in place
        a = np.take(picked_rows, cols0, axis=1).astype(np.float32)
        b = np.take(picked_rows, cols1, axis=1).astype(np.float32)
        a *= keep_x
        b *= wx
        a += b
        return a

    top, bottom = horizontal(rows[y0]), horizontal(rows[y1])
    top *= keep_y
    bottom *= wy
    top += bottom
    return top.reshape(height, width, channels)


def preprocess_cpu(frames: list[Frame], size: tuple[int, int]) -> torch.Tensor:
    height, width = size
    out = np.empty((len(frames), 3, height, width), dtype=np.float32)
    for i, frame in enumerate(frames):
        resized = resize_bilinear(_to_numpy(frame), height, width)
        out[i] = resized[:, :, ::-1].transpose(2, 0, 1) * INV_255
    return torch.from_numpy(out)


# ---- public op ----
def preprocess(
    frames_uint8_bgr: Frame | Sequence[Frame],
    size: int | Sequence[int],
    *,
    device: torch.device | str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """BGR uint8 (H, W, 3) frame(s) -> float32 RGB [0, 1] tensor (N, 3, size_h, size_w).

    Frames may differ in size (WLI and NBI do). The result lives on `device`
    (default: the first frame's device, CPU for numpy); on CUDA all frames are
    resized in one Triton launch from their uint8 bytes.
    """
    frames = _as_frame_list(frames_uint8_bgr)
    size = as_size(size)
    first = frames[0]
    if device is None:
        device = first.device if isinstance(first, torch.Tensor) else torch.device("cpu")
    if use_triton(torch.empty(0, device=device), backend):
        return preprocess_triton(frames, size, torch.device(device))
    return preprocess_cpu(frames, size).to(device)


def _as_frame_list(frames: Frame | Sequence[Frame]) -> list[Frame]:
    if isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim == 3:
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise ValueError("preprocess needs at least one frame")
    for i, frame in enumerate(frames):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype not in (np.uint8, torch.uint8):
            raise ValueError(
                f"frame {i}: expected a BGR uint8 (H, W, 3) image, got shape {tuple(frame.shape)} dtype {frame.dtype}"
            )
    return frames


def _to_numpy(array: Frame) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
