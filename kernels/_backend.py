"""Backend choice shared by every op: plain torch or the Triton kernels.

Triton is optional at import time (a CPU-only install may lack it), so the
kernel modules import `triton`/`tl` from here; without Triton they get a stub
whose `jit` leaves the function undefined-but-harmless and every op falls back
to torch.
"""
from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA torch wheels; CPU installs may not have it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on installs without triton
    HAS_TRITON = False

    class _Stub:
        """Stands in for `triton` / `triton.language` so kernel modules still import."""

        constexpr = object
        dtype = object

        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def autotune(*_args, **_kwargs):
            return lambda f: f

        @staticmethod
        def Config(*_args, **_kwargs):  # noqa: N802 - mirrors triton.Config
            return None

        def __getattr__(self, name):
            return object

    triton = _Stub()  # type: ignore[assignment]
    tl = _Stub()  # type: ignore[assignment]

BACKENDS = ("auto", "triton", "torch")


def interpreter_enabled() -> bool:
    """True when Triton kernels run through the CPU interpreter (set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(tensor: torch.Tensor, backend: str) -> bool:
    """Decide whether an op runs its Triton kernels for `tensor` under `backend`.

    auto: Triton on CUDA tensors (when triton is installed), torch elsewhere.
    triton: always the kernels; CPU tensors need TRITON_INTERPRET=1 set before
    `endofuse.kernels` is imported (Triton reads it when the kernels are defined).
    torch: the plain-torch path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto":
        return HAS_TRITON and tensor.is_cuda
    if not HAS_TRITON:
        raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
    if not tensor.is_cuda and not interpreter_enabled():
        raise RuntimeError(
            "backend='triton' on CPU tensors runs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before importing endofuse.kernels (or use CUDA tensors / backend='torch')"
        )
    return True


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` precision for `dtype` inputs: fp32 honours torch's TF32 switch so the
    kernels match torch's own matmuls; fp16/bf16 run on tensor cores anyway."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def autotune_enabled() -> bool:
    """Benchmark several tile configs on first use (GPU only; ENDOFUSE_AUTOTUNE=0 turns it off,
    e.g. in tests, where compiling every candidate for every shape costs minutes)."""
    return not interpreter_enabled() and os.environ.get("ENDOFUSE_AUTOTUNE", "1") != "0"


def tuning_configs(candidates: list[tuple[dict, int, int]]) -> list:
    """triton.Config list from (meta, num_warps, num_stages) candidates."""
    return [triton.Config(meta, num_warps=warps, num_stages=stages) for meta, warps, stages in candidates]


def launch_options(num_warps: int) -> dict:
    """Launch keywords; the interpreter runs one program at a time and takes none."""
    return {} if interpreter_enabled() else {"num_warps": num_warps}


def split_count(device: torch.device, work_tiles: int) -> int:
    """How many programs share a long reduction: ~one per SM on a GPU, 2 under the interpreter."""
    if device.type == "cuda":
        target = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2
    return max(1, min(work_tiles, target))
