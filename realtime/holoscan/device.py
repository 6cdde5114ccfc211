"""The stages for frames held as torch tensors (frames that arrived on the GPU stay there).

Host (numpy) frames take the native pipeline's functions (`segment.preprocess`,
`segment.finish_frame`) unchanged. A frame that arrived as CUDA data is a CUDA
torch tensor (frames.py), and these functions keep it there:

* `model_input`: `kernels.preprocess` on the frame's tensor (the fused Triton
  resize on CUDA) straight onto the engine's device; for an engine on the CPU
  only the small model input is copied to the host, not the frame.
* `segment.finish_frame` itself takes a frame tensor: `kernels.overlay` (the
  fused Triton mask/blend/contour on CUDA) on the frame's device, so the mask
  and overlay stay there, and the HUD box alone visits the host.
* `host_result`: a `FrameResult` with host arrays, for sinks that write files.

The functions only use torch device semantics, so they run the same on CPU
tensors (how the tests exercise them); on CUDA they were written against the
torch/DLPack API and have not run on a GPU in this project's CI.
"""
from __future__ import annotations

import dataclasses

import torch

from endofuse import kernels
from endofuse.realtime.segment import on_gpu, preprocess


def model_input(image, size: tuple[int, int], engine):
    """The engine's input for a BGR frame: as the native pipeline for numpy, on the device for tensors."""
    device = getattr(engine, "device", None)
    if not isinstance(image, torch.Tensor):
        return preprocess(image, size, device)
    if on_gpu(engine):
        return kernels.preprocess(image, size, device=device)
    return kernels.preprocess(image, size).cpu().numpy()  # a CPU engine takes numpy, as natively


def host_result(result):
    """`result` with its overlay, mask and frame as numpy arrays (the same object when they already are)."""
    if not isinstance(result.overlay, torch.Tensor):
        return result
    host = {name: getattr(result, name).cpu().numpy() for name in ("overlay", "mask", "frame")
            if isinstance(getattr(result, name), torch.Tensor)}
    return dataclasses.replace(result, **host)
