"""Shared test setup.

TRITON_INTERPRET must be set before any module defines a `@triton.jit` kernel,
so it is set here, at import time of the conftest, before tests import
`endofuse.kernels`. The interpreter runs the real kernels on CPU tensors.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores: keep torch from oversubscribing when pytest and a subprocess run at once.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# `../shared` beside the checkout (CI and developer machines); a user's clone has none.
SAMPLE_DATA = Path(os.environ.get("ENDOFUSE_SAMPLE_DATA", REPO_ROOT.parent / "shared" / "data" / "wli-nbi-sample"))


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """The 5-pair real WLI/NBI sample in the reference CSV format; skips when absent."""
    if not (SAMPLE_DATA / "Training.csv").is_file():
        pytest.skip(f"real WLI/NBI sample not found at {SAMPLE_DATA} (needs ../shared beside the checkout)")
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


BENCHMARKS = REPO_ROOT / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """A script from benchmarks/ (not a package) imported by path, as `python benchmarks/NAME.py` would see it."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # for its `_common` helper
    module_name = f"benchmarks_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
