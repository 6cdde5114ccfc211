"""Half-pixel bilinear taps shared by the frame ops, in both twins.

src = (dst + 0.5) * (n_in / n_out) - 0.5, clamped at 0, in float32 (the cv2
INTER_LINEAR / torch `align_corners=False` convention, no antialias). The CPU
twin (`source_coords`) and the Triton helper (`taps`) compute it the same way,
so both paths take the same taps and weights.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from endofuse.kernels._backend import tl, triton


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """An int or an (H, W) pair -> (H, W) of positive ints."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


def source_coords(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Taps along one axis: (index0, index1, weight of index1), exactly as `taps` computes them."""
    scale = np.float32(n_in / n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    index0 = np.minimum(src.astype(np.int64), n_in - 1)  # truncation == floor for src >= 0
    index1 = np.minimum(index0 + 1, n_in - 1)
    return index0, index1, src - index0.astype(np.float32)


@triton.jit
def taps(dst, scale, n_in):
    """Taps of output coordinate `dst`: (index0, index1, weight of index1); `scale` = n_in / n_out."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    index0 = tl.minimum(src.to(tl.int32), n_in - 1)  # truncation == floor for src >= 0
    index1 = tl.minimum(index0 + 1, n_in - 1)
    return index0, index1, src - index0.to(tl.float32)
