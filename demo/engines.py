"""The demo's model/engine picker: which checkpoints and backends it offers, and
the engines it has opened so far (opened once, on first use, then reused).
"""
from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass

from endofuse.errors import InvalidOptionError
from endofuse.realtime.engines import BACKENDS, open_engine, tensorrt_available

BUNDLED_MODEL = "bundled demo weights (tiny, synthetic data)"

EngineOpener = Callable[..., object]  # open_engine(checkpoint_or_None, backend=...) -> Engine


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model picker: a label and the checkpoint it opens (None = bundled weights)."""

    label: str
    checkpoint: str | None


def model_choices(checkpoint: str | None) -> list[ModelChoice]:
    """The user's --checkpoint first (it is what they asked for), then the bundled demo weights."""
    choices = [ModelChoice(BUNDLED_MODEL, None)]
    if checkpoint:
        choices.insert(0, ModelChoice(f"--checkpoint {checkpoint}", str(checkpoint)))
    return choices


# Backends that need packages beyond the base install: offered only where those import.
NEEDS_PACKAGES = {"openvino": ("openvino",), "openvino-int8": ("openvino", "nncf")}


def available_backends() -> list[str]:
    """Backends worth offering here: OpenVINO only where it is installed (INT8 also needs NNCF, which
    calibrates it), TensorRT only where it can run (package + CUDA GPU)."""
    def usable(backend: str) -> bool:
        if backend == "tensorrt":
            return tensorrt_available()
        return all(importlib.util.find_spec(name) is not None for name in NEEDS_PACKAGES.get(backend, ()))

    return [b for b in BACKENDS if usable(b)]


class EngineCache:
    """Opens each (checkpoint, backend) engine once and hands the same one to every request.

    Opening can take seconds (ONNX export on first use), so a lock makes two
    concurrent first requests wait for one open instead of exporting twice.
    """

    def __init__(self, choices: list[ModelChoice], opener: EngineOpener | None = None) -> None:
        self.choices = {c.label: c for c in choices}
        self._opener = opener or open_engine
        self._engines: dict[tuple[str | None, str], object] = {}
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.choices)

    def get(self, model_label: str, backend: str):
        """The engine for a picker entry and backend, opened (and warmed up) on first use."""
        if model_label not in self.choices:
            raise InvalidOptionError(f"unknown model {model_label!r}; choose one of {self.labels}")
        if backend not in BACKENDS:
            raise InvalidOptionError(f"unknown engine {backend!r}; choose one of {BACKENDS}")
        key = (self.choices[model_label].checkpoint, backend)
        with self._lock:
            if key not in self._engines:
                engine = self._opener(key[0], backend=backend)
                engine.warmup()
                self._engines[key] = engine
            return self._engines[key]
