"""The stages for frames held as torch tensors (frames that arrived on the GPU stay there).

Host (numpy) frames take the native pipeline's functions (`segment.preprocess`,
`segment.finish_frame`) unchanged. A frame that arrived as CUDA data is a CUDA
torch tensor (frames.py), and these functions keep it there:

* `model_input`: `kernels.preprocess` on the frame's tensor (the fused Triton
  resize on CUDA) straight onto the engine's device; for an engine on the CPU
  only the small model input is copied to the host, not the frame.
* `finish_tensor`: `kernels.overlay` (the fused Triton mask/blend/contour on
  CUDA) on the frame's device; the mask and overlay stay there. The HUD is
  drawn by OpenCV on a host copy of its box only, which is copied back.
* `host_result`: a `FrameResult` with host arrays, for sinks that write files.

The functions only use torch device semantics, so they run the same on CPU
tensors (how the tests exercise them); on CUDA they were written against the
torch/DLPack API and have not run on a GPU in this project's CI.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from endofuse import kernels
from endofuse.realtime.overlay import HudInfo, OverlayStyle, draw_hud, hud_rectangle
from endofuse.realtime.segment import on_gpu, preprocess
from endofuse.realtime.tracing import now


def model_input(image, size: tuple[int, int], engine):
    """The engine's input for a BGR frame: as the native pipeline for numpy, on the device for tensors."""
    device = getattr(engine, "device", None)
    if not isinstance(image, torch.Tensor):
        return preprocess(image, size, device)
    if on_gpu(engine):
        return kernels.preprocess(image, size, device=device)
    return kernels.preprocess(image, size).cpu().numpy()  # a CPU engine takes numpy, as natively


def finish_tensor(logits, frame: torch.Tensor, style: OverlayStyle,
                  hud=None) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """`segment.finish_frame` for a frame tensor: (mask, overlay, postprocess ms, overlay ms) on its device."""
    started = now()
    logits = torch.as_tensor(logits).to(frame.device)  # a CPU engine's logits are small; the frame is not
    image, mask = kernels.overlay(frame, logits, style.alpha, style.color, contour=style.contour)
    t_post = now()
    if style.hud and hud is not None:
        draw_hud_tensor(image, hud())
    done = now()
    return mask, image, (t_post - started) * 1000, (done - t_post) * 1000


def draw_hud_tensor(image: torch.Tensor, info: HudInfo) -> None:
    """`draw_hud` on a tensor in place: only the HUD box goes to the host and back."""
    x0, y0, x1, y1 = hud_rectangle(tuple(image.shape), info.lines())
    host = np.empty(tuple(image.shape), np.uint8)  # untouched outside the box (draw_hud writes only inside it)
    host[y0:y1, x0:x1] = image[y0:y1, x0:x1].cpu().numpy()
    draw_hud(host, info)
    image[y0:y1, x0:x1] = torch.from_numpy(host[y0:y1, x0:x1]).to(image.device)


def host_result(result):
    """`result` with its overlay, mask and frame as numpy arrays (the same object when they already are)."""
    if not isinstance(result.overlay, torch.Tensor):
        return result
    host = {name: getattr(result, name).cpu().numpy() for name in ("overlay", "mask", "frame")
            if isinstance(getattr(result, name), torch.Tensor)}
    return dataclasses.replace(result, **host)
