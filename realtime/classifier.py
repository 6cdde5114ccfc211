"""The frame classifier in the live pipeline: class + confidence per WLI frame, in the inference stage.

`FrameClassifier.open(path)` takes a classifier checkpoint (.pt, run in torch with
LoRA merged), its exported image tower (.onnx, ONNX Runtime) or OpenVINO IR
(.xml). It reads the segmentation engine's model input (1, 3, H, W) RGB [0, 1]
and resizes it bilinearly to the classifier's input size, so the frame is
decoded and preprocessed once for both models.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from endofuse.errors import EndofuseError, MissingFileError


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
    def open(cls, path: str | os.PathLike) -> FrameClassifier:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"--classifier: file not found: {path}")
        if path.suffix.lower() in (".onnx", ".xml"):
            from endofuse.realtime.engines.classifier_export import OnnxTower, OpenVinoTower, read_metadata

            meta = read_metadata(path.with_suffix(".onnx") if path.suffix.lower() == ".xml" else path)
            tower = OnnxTower(path) if path.suffix.lower() == ".onnx" else OpenVinoTower(path)
            engine = "onnxruntime" if path.suffix.lower() == ".onnx" else "openvino"

            def run(x: np.ndarray) -> np.ndarray:
                return tower.run(x)[0]

            return cls(run, json.loads(meta["classes"]), int(meta["img_size"]), f"{meta['model_name']} ({engine})")
        from endofuse.model.entrep_weights import load_classifier

        model = load_classifier(path)
        model.merge_lora()

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return cls(run_torch, model.classes, model.img_size, f"{model.name} (torch)")

    def __call__(self, model_input) -> Classification:
        """Classify one frame from the segmentation engine's input (numpy or torch, (1, 3, H, W))."""
        x = torch.as_tensor(model_input).float().cpu()
        if x.ndim != 4 or x.shape[1] != 3:
            raise EndofuseError(f"classifier input must be (1, 3, H, W), got {tuple(x.shape)}")
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        logits = self._run(np.ascontiguousarray(x.numpy()))[0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = int(probs.argmax())
        return Classification(self.classes[best], float(probs[best]))
