"""The one engine interface every backend implements.

An engine takes preprocessed batches (RGB float32 in [0, 1], NCHW, at the
model's native size) and returns logits (B, num_classes, H, W). Callers hand it
numpy arrays (they get numpy back) or torch tensors (they get torch tensors on
the engine's device back); each backend implements only its native type and
this base class converts the other.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from endofuse.errors import EndofuseError

ArrayLike = Any  # np.ndarray | torch.Tensor


class Engine(ABC):
    """Runs the segmentation network on (wli, nbi | None) batches.

    Attributes: `name` (backend, e.g. "torch", "onnxruntime-int8"), `input_size`
    (H, W), `num_classes`, `model_label` (what the weights are, for displays),
    `device` ("cpu" or "cuda[:i]"), `max_batch` (None when any batch works).
    """

    name: str = "engine"
    native: str = "numpy"  # "numpy" or "torch": the type `_run` takes and returns

    def __init__(self, *, input_size: tuple[int, int], num_classes: int, model_label: str,
                 device: str = "cpu", fixed_batch: int | None = None) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.num_classes = int(num_classes)
        self.model_label = model_label
        self.device = device
        self.fixed_batch = fixed_batch

    # -- the interface ---------------------------------------------------------
    def infer(self, wli: ArrayLike, nbi: ArrayLike | None = None) -> ArrayLike:
        """Logits for a batch; `nbi=None` runs the missing-NBI path."""
        batch = self.check_batch(wli, "wli")
        if nbi is not None:
            nbi_batch = self.check_batch(nbi, "nbi")
            if nbi_batch != batch:
                raise EndofuseError(f"{self.name} engine: wli batch has {batch} frames but nbi has {nbi_batch}")
        if isinstance(wli, torch.Tensor):
            return self._infer_torch(wli, nbi)
        return self._infer_numpy(wli, nbi)

    def close(self) -> None:
        """Releases what the engine holds beyond memory (a server connection); nothing for a local engine."""
        return None

    def warmup(self, iterations: int = 3, batch_size: int | None = None) -> float:
        """Runs a few dummy batches (both paths) so the first real frame is not slow; returns seconds spent."""
        start = time.perf_counter()
        batch = batch_size or self.fixed_batch or 1
        wli = np.zeros((batch, 3, *self.input_size), np.float32)
        for _ in range(iterations):
            self.infer(wli, wli)
            if self.supports_missing_nbi:
                self.infer(wli, None)
        return time.perf_counter() - start

    @property
    def supports_missing_nbi(self) -> bool:
        return True

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, "
                f"num_classes={self.num_classes}, device={self.device!r}, model={self.model_label!r})")

    # -- what a backend implements ---------------------------------------------
    @abstractmethod
    def _run(self, wli: ArrayLike, nbi: ArrayLike | None) -> ArrayLike:
        """Runs on inputs of the native type (already checked)."""

    # -- conversions -----------------------------------------------------------
    def _infer_numpy(self, wli: np.ndarray, nbi: np.ndarray | None) -> np.ndarray:
        wli, nbi = _as_float32(wli), None if nbi is None else _as_float32(nbi)
        if self.native == "numpy":
            return self._run(wli, nbi)
        to_device = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        out = self._run(to_device(wli), None if nbi is None else to_device(nbi))
        return out.float().cpu().numpy()

    def _infer_torch(self, wli: torch.Tensor, nbi: torch.Tensor | None) -> torch.Tensor:
        if self.native == "torch":
            to_device = lambda t: t.to(self.device, torch.float32)  # noqa: E731
            return self._run(to_device(wli), None if nbi is None else to_device(nbi))
        to_numpy = lambda t: t.detach().to("cpu", torch.float32).numpy()  # noqa: E731
        out = self._run(to_numpy(wli), None if nbi is None else to_numpy(nbi))
        return torch.from_numpy(out).to(self.device)

    def check_batch(self, x: ArrayLike, role: str) -> int:
        """Checks one input batch against what the engine was built for; returns its batch size."""
        if not isinstance(x, (np.ndarray, torch.Tensor)):
            raise EndofuseError(f"{self.name} engine: {role} must be a numpy array or torch tensor, "
                                f"got {type(x).__name__}")
        shape = tuple(x.shape)
        expected = f"(B, 3, {self.input_size[0]}, {self.input_size[1]})"
        if len(shape) != 4 or shape[1] != 3 or shape[2:] != self.input_size:
            raise EndofuseError(
                f"{self.name} engine: {role} batch has shape {shape}, expected {expected} RGB NCHW at the model's "
                f"input size; resize/preprocess frames first (endofuse.kernels.preprocess)")
        if not _is_float(x):
            raise EndofuseError(
                f"{self.name} engine: {role} batch is {x.dtype}, expected preprocessed float32 in [0, 1] "
                f"(raw uint8 frames go through endofuse.kernels.preprocess first)")
        if shape[0] < 1:
            raise EndofuseError(f"{self.name} engine: {role} batch is empty")
        if self.fixed_batch is not None and shape[0] != self.fixed_batch:
            raise EndofuseError(
                f"{self.name} engine: {role} batch has {shape[0]} frames but this model was exported for a fixed "
                f"batch of {self.fixed_batch}; export with --dynamic-batch to vary it")
        return shape[0]


def _is_float(x: ArrayLike) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point()
    return np.issubdtype(x.dtype, np.floating)


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)
