"""Frame pre- and post-processing for the live path.

`preprocess`: BGR uint8 frames (any sizes) -> one RGB float32 [0, 1] NCHW batch at
`size`, bilinear with half-pixel centres (the cv2 INTER_LINEAR / torch
`align_corners=False` convention, no antialias), with float32 tap coordinates
computed the same way on both paths so they agree to float rounding.

`overlay`: class logits at model resolution -> bilinear upsample to the frame,
argmax (foreground = any class but 0), alpha blend of `color` over the
foreground and a 2-px inner contour in full `color`; returns (image, mask).

CPU path: OpenCV/numpy. CUDA path: Triton kernels (one launch per call).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import cv2
import numpy as np
import torch

from endofuse.kernels._backend import use_triton

Frame = Union[np.ndarray, torch.Tensor]
CONTOUR_PX = 2  # contour thickness: foreground pixels within 2 px (Chebyshev) of background
INV_255 = np.float32(1.0 / 255.0)


class Overlay(NamedTuple):
    image: Frame  # BGR uint8 (H, W, 3), same kind (numpy / torch) as the input frame
    mask: Frame  # uint8 (H, W) in {0, 1}


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """An int or an (H, W) pair -> (H, W) of positive ints."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


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


def source_coords(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel bilinear taps along one axis: (index0, index1, weight of index1).

    src = (dst + 0.5) * (n_in / n_out) - 0.5, clamped at 0, in float32 exactly as
    the Triton kernels compute it, so both paths take the same taps and weights.
    """
    scale = np.float32(n_in / n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    index0 = np.minimum(src.astype(np.int64), n_in - 1)  # truncation == floor for src >= 0
    index1 = np.minimum(index0 + 1, n_in - 1)
    return index0, index1, src - index0.astype(np.float32)


def resize_bilinear(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (h, w, C) -> float32 (height, width, C), values still in [0, 255].

    Gathers only the four taps of each output pixel (cheaper than converting the
    whole full-HD frame to float first) and blends them in the kernels' order.
    """
    y0, y1, wy = source_coords(frame.shape[0], height)
    x0, x1, wx = source_coords(frame.shape[1], width)
    flat = frame.reshape(-1, frame.shape[2])

    def taps(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.take(flat, rows[:, None] * frame.shape[1] + cols[None, :], axis=0).astype(np.float32)

    wx, wy = wx[None, :, None], wy[:, None, None]
    top = taps(y0, x0) * (1 - wx) + taps(y0, x1) * wx
    bottom = taps(y1, x0) * (1 - wx) + taps(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def preprocess_cpu(frames: list[Frame], size: tuple[int, int]) -> torch.Tensor:
    height, width = size
    out = np.empty((len(frames), 3, height, width), dtype=np.float32)
    for i, frame in enumerate(frames):
        resized = resize_bilinear(_to_numpy(frame), height, width)
        out[i] = resized[:, :, ::-1].transpose(2, 0, 1) * INV_255
    return torch.from_numpy(out)


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
    probe = torch.empty(0, device=device)
    if use_triton(probe, backend):
        from endofuse.kernels.frames_triton import preprocess_triton

        return preprocess_triton(frames, size, torch.device(device))
    return preprocess_cpu(frames, size).to(device)


def _check_overlay_args(frame: Frame, logits: torch.Tensor, alpha: float, color: Sequence[int]) -> torch.Tensor:
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


def foreground_mask_cpu(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) logits -> uint8 (H, W) mask: argmax after bilinear upsampling is not class 0.

    argmax != 0 exactly when some class c > 0 beats class 0 strictly (the first
    maximum wins ties), which needs one max and one compare instead of an argmax.
    """
    channels_last = np.ascontiguousarray(logits.transpose(1, 2, 0), dtype=np.float32)
    up = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    best_other = up[:, :, 1] if up.shape[2] == 2 else up[:, :, 1:].max(axis=2)
    return (best_other > up[:, :, 0]).view(np.uint8)


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


def blend(frame: np.ndarray, mask: np.ndarray, contour: np.ndarray, alpha: float, color: Sequence[int]) -> np.ndarray:
    """frame*(1-alpha) + color*alpha on the mask (rounded half up), color on the contour.

    Works on the mask's bounding box only (a table lookup and two masked copies),
    so the cost follows the tumour's size rather than the frame's.
    """
    out = frame.copy()
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return out
    box = (slice(y, y + h), slice(x, x + w))
    cv2.copyTo(cv2.LUT(frame[box], blend_table(alpha, color)), mask[box], out[box])
    solid = np.empty((h, w, 3), np.uint8)
    solid[:] = np.asarray(color, np.uint8)
    cv2.copyTo(solid, contour[box], out[box])
    return out


def overlay_cpu(frame: np.ndarray, logits: np.ndarray, alpha: float, color: Sequence[int]) -> Overlay:
    height, width = frame.shape[:2]
    mask = foreground_mask_cpu(logits, height, width)
    return Overlay(blend(frame, mask, inner_contour(mask), alpha, color), mask)


def overlay(
    frame_uint8: Frame,
    logits: torch.Tensor,
    alpha: float = 0.45,
    color: Sequence[int] = (0, 0, 255),
    *,
    backend: str = "auto",
) -> Overlay:
    """Segmentation overlay of `logits` on a BGR frame -> Overlay(image, mask).

    The work runs where `logits` live (Triton on CUDA); the image and mask come
    back in the frame's kind: numpy in, numpy out; torch in, torch on the frame's device.
    """
    logits = _check_overlay_args(frame_uint8, logits, alpha, color)
    if use_triton(logits, backend):
        from endofuse.kernels.frames_triton import overlay_triton

        frame_t = torch.as_tensor(frame_uint8).to(logits.device)
        image, mask = overlay_triton(frame_t, logits, float(alpha), tuple(int(c) for c in color))
    else:
        image, mask = overlay_cpu(_to_numpy(frame_uint8), _to_numpy(logits.float()), float(alpha), color)
    if isinstance(frame_uint8, torch.Tensor):
        return Overlay(torch.as_tensor(image).to(frame_uint8.device), torch.as_tensor(mask).to(frame_uint8.device))
    return Overlay(_to_numpy(image), _to_numpy(mask))
