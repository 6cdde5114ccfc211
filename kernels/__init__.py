"""endofuse.kernels: fused ops with Triton kernels and plain-torch twins.

Every op dispatches on its inputs: `backend="auto"` runs the Triton kernels on
CUDA tensors and a plain-torch (or OpenCV) implementation elsewhere;
`backend="triton"` forces the kernels (CPU tensors need TRITON_INTERPRET=1);
`backend="torch"` forces the fallback. The model calls these functions, so a
GPU user gets the fused path with no code change.
"""
from endofuse.kernels._backend import BACKENDS, HAS_TRITON
from endofuse.kernels.dacl import dacl_loss
from endofuse.kernels.flash_attention import attention
from endofuse.kernels.frame_preprocess import preprocess
from endofuse.kernels.mask_overlay import overlay
from endofuse.kernels.mmd import mmd_loss

__all__ = ["attention", "dacl_loss", "mmd_loss", "preprocess", "overlay", "BACKENDS", "HAS_TRITON"]
