"""Shared test setup.

TRITON_INTERPRET must be set before any module defines a `@triton.jit` kernel,
so it is set here, at import time of the conftest, before tests import
`endofuse.kernels`. The interpreter runs the real kernels on CPU tensors.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores: keep torch from oversubscribing when pytest and a subprocess run at once.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from pathlib import Path  # noqa: E402

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
