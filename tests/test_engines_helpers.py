"""Shared pieces of the engines tests (no tests here): a small model and its export, made once per session."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from endofuse.model import build_model, save_checkpoint
from endofuse.realtime.engines import open_engine

SIZE = 32  # small inputs: these tests are about correctness, not speed


def tiny_test_model(seed: int = 0) -> torch.nn.Module:
    """A shallow tiny at 32x32 (export time grows with depth) whose logits depend visibly on both inputs."""
    torch.manual_seed(seed)
    model = build_model("tiny", img_size=SIZE, depth=2, shallow_taps=(1, 1, 2)).eval()
    # The default init leaves the missing-NBI token at zero and the logits nearly input-independent;
    # fan-in scaled weights make both paths, and the difference between them, clearly visible.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model


def random_pair(batch: int = 1, seed: int = 1, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.random((batch, 3, size, size), dtype=np.float32) for _ in range(2))


def torch_logits(model, wli: np.ndarray, nbi: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(wli), None if nbi is None else torch.from_numpy(nbi)).numpy()


@dataclass(frozen=True)
class Exported:
    model: torch.nn.Module
    checkpoint: Path
    onnx_path: Path  # dynamic-batch export in the cache, missing-NBI variant beside it
    cache: Path


_EXPORTED: dict[str, Exported] = {}


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
    """One checkpoint opened with ONNX Runtime, i.e. exported into a private cache, once per session."""
    if "tiny" not in _EXPORTED:
        folder = tmp_path_factory.mktemp("engines")
        model = tiny_test_model()
        checkpoint = save_checkpoint(folder / "tiny.pt", model)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ENDOFUSE_CACHE", str(folder / "cache"))
            engine = open_engine(checkpoint, backend="onnxruntime", dynamic_batch=True)
        _EXPORTED["tiny"] = Exported(model, checkpoint, engine.path, folder / "cache")
    return _EXPORTED["tiny"]
