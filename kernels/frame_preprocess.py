"""Frame preprocessing: BGR uint8 frames (any sizes) -> one RGB float32 [0, 1] NCHW batch.

The one implementation of the model's input convention, used by training,
evaluation, INT8 calibration and the live path. Bilinear with half-pixel
centres and no antialias (`endofuse.kernels.bilinear`), computed from the
uint8 bytes in float32 (no rounding back to uint8), then BGR->RGB and /255.

Layers: the Triton kernel (`_preprocess_kernel`), its host launcher
(`preprocess_triton`), the CPU twin (`preprocess_cpu`, numpy, tap for tap the
same arithmetic: gathers of the tap bytes by cached flat indices, then the
float32 blend straight into the RGB CHW batch) and the public `preprocess`,
which picks one.
"""
from __future__ import annotations

import functools
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
@functools.lru_cache(maxsize=16)
def resize_plan(h: int, w: int, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Flat byte indices of the four taps, (3 * height, width) each, and their weights, for an (h, w) BGR frame.

    Row r = c * height + y of an index array reads output channel c (RGB) at row y
    from BGR byte 2 - c, so the blend writes the model's CHW layout directly.
    Cached per frame size (a stream keeps its sizes; 2.5 MB per size).
    """
    y0, y1, wy = source_coords(h, height)
    x0, x1, wx = source_coords(w, width)
    bgr = np.arange(2, -1, -1)[:, None]

    def flat(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        row_start = (rows[None, :] * (w * 3) + bgr).reshape(-1, 1)  # (3 * height, 1)
        return (row_start + cols[None, :] * 3).astype(np.intp)

    wy = np.tile(wy, 3)[:, None]
    return flat(y0, x0), flat(y0, x1), flat(y1, x0), flat(y1, x1), (1 - wx)[None, :], wx[None, :], 1 - wy, wy


def resize_bilinear_chw(frame: np.ndarray, height: int, width: int, out: np.ndarray) -> np.ndarray:
    """uint8 BGR (h, w, 3) -> float32 RGB (3, height, width) in [0, 1], written into `out`.

    The kernel's arithmetic in its order: a * (1 - wx) + b * wx per row tap, then
    top * (1 - wy) + bottom * wy, then * (1 / 255), all float32 from the uint8
    bytes; only the 4 x 3 x height x width bytes the taps read are gathered.
    """
    index_a, index_b, index_c, index_d, keep_x, wx, keep_y, wy = resize_plan(*frame.shape[:2], height, width)
    data = np.ascontiguousarray(frame).reshape(-1)

    def horizontal(left: np.ndarray, right: np.ndarray) -> np.ndarray:  # a * (1 - wx) + b * wx, in place
        a = data.take(left).astype(np.float32)
        b = data.take(right).astype(np.float32)
        a *= keep_x
        b *= wx
        a += b
        return a

    top, bottom = horizontal(index_a, index_b), horizontal(index_c, index_d)
    top *= keep_y
    bottom *= wy
    top += bottom
    return np.multiply(top.reshape(3, height, width), INV_255, out=out)


def preprocess_cpu(frames: list[Frame], size: tuple[int, int]) -> torch.Tensor:
    height, width = size
    out = np.empty((len(frames), 3, height, width), dtype=np.float32)
    for i, frame in enumerate(frames):
        resize_bilinear_chw(_to_numpy(frame), height, width, out[i])
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
