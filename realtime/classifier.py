"""The frame classifier in the live pipeline: class + confidence per WLI frame, in the inference stage.

`FrameClassifier.open(path, engine="auto")` takes a classifier checkpoint (.pt),
its exported image tower (.onnx) or OpenVINO IR (.xml). Engines are picked as
for segmentation: `auto` = OpenVINO on x86 CPUs when installed, else ONNX
Runtime, else torch; a checkpoint opened with an ONNX-based engine is exported
once into the engine cache. It reads the segmentation engine's model input
(1, 3, H, W) RGB [0, 1] and resizes it bilinearly to the classifier's input
size, so the frame is decoded and preprocessed once for both models.

It shares the cores with the segmentation engine and the pipeline's capture,
preprocess and overlay threads, so it runs on ONE inference thread: with two,
every call waits for a second thread that a busy core has descheduled (on a
loaded 2-core Xeon, entrep-tiny's tower alone: 1.0 ms on one thread; OpenVINO
on two: p50 3.1 ms, p90 7.4 ms). A one-thread tower loses nothing at this size
and leaves the other core to the pipeline.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from endofuse.errors import EndofuseError, MissingFileError

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
TOWER_THREADS = 1  # see the module docstring


def resolve_engine(engine: str, suffix: str) -> str:
    """`auto` -> openvino (x86 CPU, installed) -> onnxruntime -> torch (a .pt checkpoint only)."""
    if engine != "auto":
        return engine
    if suffix == ".xml":
        return "openvino"
    from endofuse.realtime.engines.factory import openvino_preferred

    if openvino_preferred("cpu"):
        return "openvino"
    if importlib.util.find_spec("onnxruntime") is not None:
        return "onnxruntime"
    if suffix == ".onnx":
        raise EndofuseError("an .onnx classifier needs onnxruntime or openvino: pip install onnxruntime")
    return "torch"


@dataclass(frozen=True)
class Classification:
    label: str
    confidence: float

    def hud_line(self) -> str:
        return f"{self.label} {self.confidence:.0%}"


class FrameClassifier:
    def __init__(self, run, classes: list[str], img_size: int, label: str):
        self._run, self.classes, self.img_size, self.label = run, list(classes), int(img_size), label

    @classmethod
    def open(cls, path: str | os.PathLike, engine: str = "auto", log=None) -> FrameClassifier:
        """A classifier from a checkpoint / .onnx / .xml on `engine` (auto, torch, onnxruntime, openvino)."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"--classifier: file not found: {path}")
        if engine not in ENGINES:
            raise EndofuseError(f"classifier engine {engine!r}: choose one of {', '.join(ENGINES)}")
        suffix = path.suffix.lower()
        if suffix == ".xml" and engine not in ("auto", "openvino"):
            raise EndofuseError(f"{path} is an OpenVINO IR; it runs only with the openvino engine, not {engine!r}")
        if suffix == ".onnx" and engine == "torch":
            raise EndofuseError(f"{path} is an ONNX file; the torch engine needs the .pt checkpoint")
        engine = resolve_engine(engine, suffix)
        if engine == "torch":
            return cls._torch(path)
        from endofuse.realtime.engines.classifier_export import (
            OnnxTower,
            OpenVinoTower,
            cached_image_tower,
            read_metadata,
        )

        onnx_path = path if suffix == ".onnx" else None
        if suffix not in (".onnx", ".xml"):
            onnx_path = cached_image_tower(path, log)
        meta = read_metadata(onnx_path if onnx_path is not None else path.with_suffix(".onnx"))
        if engine == "openvino":
            tower = OpenVinoTower(path if suffix == ".xml" else onnx_path, threads=TOWER_THREADS)
        else:
            tower = OnnxTower(onnx_path, threads=TOWER_THREADS)

        def run(x: np.ndarray) -> np.ndarray:
            return tower.run(x)[0]

        return cls(run, json.loads(meta["classes"]), int(meta["img_size"]), f"{meta['model_name']} ({engine})")

    @classmethod
    def _torch(cls, path: Path) -> FrameClassifier:
        from endofuse.model.entrep_weights import load_classifier

        model = load_classifier(path)
        model.merge_lora()

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return cls(run_torch, model.classes, model.img_size, f"{model.name} (torch)")

    def __call__(self, model_input) -> Classification:
        """Classify one frame from the segmentation engine's input (numpy or torch, (1, 3, H, W))."""
        x = resize_input(model_input, self.img_size)
        logits = self._run(x)[0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = int(probs.argmax())
        return Classification(self.classes[best], float(probs[best]))


def resize_input(model_input, size: int) -> np.ndarray:
    """(1, 3, H, W) float32 -> (1, 3, size, size) float32, bilinear (half-pixel centres, no antialias).

    OpenCV, not torch: torch's interpolate runs on its OpenMP pool, whose threads
    spin after each call and then fight the engines' and the pipeline's threads
    for the cores (on 2 loaded cores it took 2-10 ms for a 160 px input; this
    takes ~0.1 ms). Same values as `F.interpolate(..., "bilinear",
    align_corners=False)` to float rounding.
    """
    if isinstance(model_input, torch.Tensor):
        model_input = model_input.detach().float().cpu().numpy()
    x = np.asarray(model_input, dtype=np.float32)
    if x.ndim != 4 or x.shape[:2] != (1, 3):
        raise EndofuseError(f"classifier input must be (1, 3, H, W), got {tuple(x.shape)}")
    if x.shape[2:] == (size, size):
        return np.ascontiguousarray(x)
    hwc = cv2.resize(x[0].transpose(1, 2, 0), (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)[None])
