"""One WLI/NBI pair through preprocess -> engine -> postprocess -> overlay.

`segment_pair` is the embedding API for a single pair (used by the demo); the
pipeline calls the same stage functions from its own threads. Both stages are
`endofuse.kernels` ops (CPU twin or Triton kernel by where the data lives), the
same ones training, evaluation and INT8 calibration call.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from endofuse import kernels
from endofuse.errors import InvalidInputError
from endofuse.realtime.output.overlay import HudInfo, OverlayStyle, draw_hud, draw_hud_tensor
from endofuse.realtime.tracing import now

FUSED = "FUSED"
WLI_ONLY = "WLI-ONLY"


def check_frame(frame: np.ndarray, what: str) -> None:
    """Raise an InvalidInputError naming `what` unless `frame` is an HxWx3 uint8 BGR image."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InvalidInputError(f"{what} must be an HxWx3 uint8 BGR image, got {desc}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise InvalidInputError(f"{what} is too small: {frame.shape[1]}x{frame.shape[0]}")


def on_gpu(engine) -> bool:
    """True when the engine runs on CUDA: frames then go through the fused Triton kernels."""
    return str(getattr(engine, "device", "cpu")).startswith("cuda")


def preprocess(frame_bgr: np.ndarray, size: tuple[int, int], device: str | None = None):
    """BGR uint8 HxWx3 -> RGB float32 [0, 1] (1, 3, H, W) at `size` = (H, W): `endofuse.kernels.preprocess`.

    The whole frame is resized (the octagonal border is kept, as in training).
    CPU: a numpy batch (what ONNX Runtime takes). CUDA: the frame is uploaded as
    uint8 and resized on the device by the Triton kernel.
    """
    if device is not None and str(device).startswith("cuda"):
        return kernels.preprocess(frame_bgr, size, device=device)
    return kernels.preprocess(frame_bgr, size).numpy()


def finish_frame(logits, frame_bgr: np.ndarray | torch.Tensor, style: OverlayStyle,
                 hud: Callable[[], HudInfo] | None = None) -> tuple:
    """Logits -> (mask, overlay, postprocess ms, overlay ms) at the frame's native size.

    Postprocess is `endofuse.kernels.overlay` (mask + blend + contour; the fused
    Triton kernel for CUDA logits, then one device->host copy); overlay is the
    HUD. A frame given as a torch tensor (one that arrived on the GPU in the
    Holoscan operators) stays on its device: mask and overlay are tensors there,
    and only the HUD box visits the host. `hud` is called at drawing time so it can show the latency up to that moment.
    `logits=None` (a served engine with no fresh mask) gives an empty mask and the bare frame with its HUD.
    """
    started = now()
    if logits is None:  # no mask for this frame (a served engine with none fresh): the frame and the HUD
        if isinstance(frame_bgr, torch.Tensor):
            overlay = frame_bgr.clone()
            mask = torch.zeros(tuple(frame_bgr.shape[:2]), dtype=torch.uint8, device=frame_bgr.device)
        else:
            overlay, mask = frame_bgr.copy(), np.zeros(frame_bgr.shape[:2], np.uint8)
    elif isinstance(frame_bgr, torch.Tensor):  # a frame already held as a tensor (on the GPU) stays on its device
        logits = torch.as_tensor(logits).to(frame_bgr.device)  # a CPU engine's logits are small; the frame is not
        overlay, mask = kernels.overlay(frame_bgr, logits, style.alpha, style.color, contour=style.contour)
    elif isinstance(logits, torch.Tensor) and logits.is_cuda:
        frame = torch.from_numpy(frame_bgr).to(logits.device, non_blocking=True)
        image, mask = kernels.overlay(frame, logits, style.alpha, style.color, contour=style.contour)
        mask, overlay = mask.cpu().numpy(), image.cpu().numpy()
    else:
        overlay, mask = kernels.overlay(frame_bgr, logits, style.alpha, style.color, contour=style.contour)
    t_post = now()
    if style.hud and hud is not None:
        (draw_hud_tensor if isinstance(overlay, torch.Tensor) else draw_hud)(overlay, hud())
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
