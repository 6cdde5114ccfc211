"""One WLI/NBI pair through preprocess -> engine -> postprocess -> overlay.

`segment_pair` is the embedding API for a single pair (used by the demo); the
pipeline calls the same three stage functions from its own threads, so there
is one implementation of each stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch

from endofuse import kernels
from endofuse.kernels.mask_overlay import foreground_mask_cpu
from endofuse.realtime.overlay import HudInfo, OverlayStyle, blend_and_outline, draw_hud
from endofuse.realtime.tracing import now

FUSED = "FUSED"
WLI_ONLY = "WLI-ONLY"


def check_frame(frame: np.ndarray, what: str) -> None:
    """Raise a ValueError naming `what` unless `frame` is an HxWx3 uint8 BGR image."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"{what} must be an HxWx3 uint8 BGR image, got {desc}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise ValueError(f"{what} is too small: {frame.shape[1]}x{frame.shape[0]}")


def on_gpu(engine) -> bool:
    """True when the engine runs on CUDA: frames then go through the fused Triton kernels."""
    return str(getattr(engine, "device", "cpu")).startswith("cuda")


def preprocess(frame_bgr: np.ndarray, size: tuple[int, int], device: str | None = None):
    """BGR uint8 HxWx3 -> RGB float32 [0, 1] (1, 3, H, W) at `size` = (H, W).

    The whole frame is resized bilinearly (the octagonal border is kept, as in
    training). CPU: `cv2.dnn.blobFromImage` does resize + BGR->RGB + scale +
    NCHW in one pass, from the uint8 frame like the training loader (~0.5 ms
    for 540x480 -> 160x160, 8x faster than a float resize; values differ from
    `endofuse.kernels.preprocess` by under 1/255). CUDA: the fused Triton
    kernel of `endofuse.kernels.preprocess` on the uploaded uint8 frame.
    """
    if device is not None and str(device).startswith("cuda"):
        frame = torch.from_numpy(frame_bgr).to(device, non_blocking=True)
        return kernels.preprocess(frame, size)
    height, width = size
    return cv2.dnn.blobFromImage(frame_bgr, 1.0 / 255.0, (width, height), swapRB=True, crop=False)


def postprocess(logits, frame_shape: tuple[int, ...]) -> np.ndarray:
    """Logits (1, C, h, w) -> uint8 {0, 1} mask at the frame's native (H, W) (class > 0 = tumour).

    Logits are resized bilinearly, then argmax'ed. With two classes that is the
    sign of the resized margin l1 - l0 (bilinear resizing is linear): one
    channel to resize instead of two.
    """
    logits = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    if logits.ndim != 4 or logits.shape[0] != 1 or logits.shape[1] < 2:
        raise ValueError(f"engine returned logits of shape {logits.shape}, expected (1, C>=2, h, w)")
    height, width = frame_shape[:2]
    if logits.shape[1] > 2:
        return foreground_mask_cpu(logits[0], height, width)
    margin = np.ascontiguousarray(logits[0, 1] - logits[0, 0], dtype=np.float32)
    resized = cv2.resize(margin, (width, height), interpolation=cv2.INTER_LINEAR)
    return (resized > 0).astype(np.uint8)


def finish_frame(logits, frame_bgr: np.ndarray, style: OverlayStyle,
                 hud: Callable[[], HudInfo] | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Logits -> (mask, overlay, postprocess ms, overlay ms) at the frame's native size.

    CUDA logits go through the fused Triton kernel (mask + blend + contour in one
    launch, timed as postprocess) with one device->host copy per frame, which the
    overlay needs anyway; otherwise OpenCV/numpy. `hud` is called at drawing time
    so it can show the latency up to that moment.
    """
    started = now()
    if isinstance(logits, torch.Tensor) and logits.is_cuda:
        frame = torch.from_numpy(frame_bgr).to(logits.device, non_blocking=True)
        image, mask = kernels.overlay(frame, logits, style.alpha, style.color)
        mask, overlay = mask.cpu().numpy(), image.cpu().numpy()
        t_post = now()
    else:
        mask = postprocess(logits, frame_bgr.shape)
        t_post = now()
        overlay = blend_and_outline(frame_bgr, mask, style)
    if style.hud and hud is not None:
        draw_hud(overlay, hud())
    done = now()
    return mask, overlay, (t_post - started) * 1000, (done - t_post) * 1000


def engine_label(engine) -> str:
    """`engine-name` plus the model label, as shown in the HUD and reports."""
    return getattr(engine, "name", type(engine).__name__)


@dataclass
class PairResult:
    """What `segment_pair` returns: mask and overlay at the WLI frame's native size."""

    mask: np.ndarray
    overlay: np.ndarray
    mode: str
    timings_ms: dict[str, float] = field(default_factory=dict)


def segment_pair(
    engine,
    wli_bgr: np.ndarray,
    nbi_bgr_or_none: np.ndarray | None,
    alpha: float = 0.45,
    *,
    style: OverlayStyle | None = None,
) -> PairResult:
    """Segment one WLI/NBI pair (NBI may be None: the missing-modality path, mode WLI-ONLY).

    `style` overrides `alpha` and sets contour/HUD; by default the overlay has
    a contour and a HUD naming the mode, the engine and the model.
    """
    style = style or OverlayStyle(alpha=alpha)
    check_frame(wli_bgr, "WLI frame")
    if nbi_bgr_or_none is not None:
        check_frame(nbi_bgr_or_none, "NBI frame")
    started = now()
    size, device = tuple(engine.input_size), getattr(engine, "device", None)
    wli_input = preprocess(wli_bgr, size, device)
    nbi_input = None if nbi_bgr_or_none is None else preprocess(nbi_bgr_or_none, size, device)
    t_pre = now()
    logits = engine.infer(wli_input, nbi_input)
    t_infer = now()
    mode = WLI_ONLY if nbi_input is None else FUSED
    label = getattr(engine, "model_label", "")
    hud = lambda: HudInfo(mode, engine_label(engine), label, latency_ms=(now() - started) * 1000)  # noqa: E731
    mask, overlay, post_ms, overlay_ms = finish_frame(logits, wli_bgr, style, hud)
    done = now()
    timings = {
        "preprocess": (t_pre - started) * 1000,
        "infer": (t_infer - t_pre) * 1000,
        "postprocess": post_ms,
        "overlay": overlay_ms,
        "total": (done - started) * 1000,
    }
    return PairResult(mask=mask, overlay=overlay, mode=mode, timings_ms=timings)
