"""Importing Holoscan on machines without a system CUDA installation.

The `holoscan-cu12` wheel links against `libcudart.so.12`. On a CUDA machine
the loader finds it; elsewhere the `nvidia-cuda-runtime-cu12` wheel ships it,
and loading it once with RTLD_GLOBAL lets `import holoscan` resolve it. On a
CPU-only machine Holoscan then runs with "support for CPU data only".
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import warnings
from pathlib import Path

from endofuse.errors import EndofuseError

INSTALL_HINT = "pip install 'endofuse[holoscan]' (holoscan-cu12>=4.5,<5 and nvidia-cuda-runtime-cu12)"
_loaded = False


def _wheel_cudart() -> Path | None:
    spec = importlib.util.find_spec("nvidia.cuda_runtime") if importlib.util.find_spec("nvidia") else None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "lib" / "libcudart.so.12"
        if candidate.is_file():
            return candidate
    return None


def load_cuda_runtime() -> None:
    """Make `libcudart.so.12` loadable for Holoscan (system library first, then the pip wheel's)."""
    global _loaded
    if _loaded:
        return
    try:
        ctypes.CDLL("libcudart.so.12", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        path = _wheel_cudart()
        if path is None:
            raise EndofuseError(f"Holoscan needs libcudart.so.12 (no CUDA found); {INSTALL_HINT}") from None
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    _loaded = True


def import_holoscan():
    """`import holoscan` after `load_cuda_runtime`, or an EndofuseError saying what to install.

    Holoscan warns when the main thread's stack is below 32 MB; its worker
    threads are created by GXF with their own stacks, and the endofuse
    operators recurse nowhere, so the warning is silenced (the tests run
    whole graphs with the default 8 MB).
    """
    if importlib.util.find_spec("holoscan") is None:
        raise EndofuseError(f"the Holoscan runtime is not installed; {INSTALL_HINT}")
    load_cuda_runtime()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*stack size.*", category=RuntimeWarning)
        import holoscan
    return holoscan


def quiet_holoscan_logs() -> None:
    """For endofuse's own commands: Holoscan's info/warning lines (CPU-only notices, stack size) off.

    Holoscan reads HOLOSCAN_LOG_LEVEL when an Application is created, so this
    works after the import; graphs of other programs keep their own setting.
    """
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "ERROR")
