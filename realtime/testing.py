"""A tiny deterministic stand-in Engine for tests and embedding examples.

It follows the Engine interface of `endofuse.realtime.engines` (infer, warmup,
name, input_size, num_classes, model_label) with a rule simple enough to be
recomputed independently in a test: the tumour logit is `red - threshold` of
the resized WLI input, the background logit is 0. Optional `delay_s` makes it
a slow consumer for queue tests.
"""
from __future__ import annotations

import time

import numpy as np


class ColourThresholdEngine:
    name = "colour-threshold"
    model_label = "colour threshold (test stand-in, not a model)"
    num_classes = 2

    def __init__(self, input_size: tuple[int, int] = (64, 64), threshold: float = 0.5, delay_s: float = 0.0) -> None:
        self.input_size = tuple(input_size)
        self.threshold = threshold
        self.delay_s = delay_s
        self.calls: list[bool] = []  # True when the call had an NBI input

    def warmup(self) -> None:
        self.infer(np.zeros((1, 3, *self.input_size), np.float32), None)
        self.calls.clear()

    def infer(self, wli: np.ndarray, nbi: np.ndarray | None) -> np.ndarray:
        if wli.shape[1:] != (3, *self.input_size):
            raise ValueError(f"expected (B, 3, {self.input_size[0]}, {self.input_size[1]}) input, got {wli.shape}")
        if nbi is not None and nbi.shape != wli.shape:
            raise ValueError(f"NBI input {nbi.shape} does not match WLI input {wli.shape}")
        self.calls.append(nbi is not None)
        if self.delay_s:
            time.sleep(self.delay_s)
        logits = np.zeros((wli.shape[0], 2, *self.input_size), np.float32)
        logits[:, 1] = wli[:, 0] - self.threshold
        return logits


def write_video(path, frames: list[np.ndarray], fps: float = 30.0, fourcc: str = "mp4v") -> None:
    """Write BGR frames with cv2.VideoWriter (what the fault tests feed the pipeline)."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path} with {fourcc}")
    for frame in frames:
        writer.write(frame)
    writer.release()


class ScriptedCapture:
    """A fake `cv2.VideoCapture` that serves `frames` frames and can refuse to open, for camera tests."""

    def __init__(self, frames: int, opens: bool = True, period_s: float = 0.0, size=(24, 32), start: int = 0):
        self.remaining, self.opens, self.period_s = frames, opens, period_s
        self.size, self.served = size, start
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 - the cv2 name
        return self.opens

    def get(self, prop) -> float:
        return 30.0 if self.opens else 0.0  # every property reads as 30 (fps)

    def read(self):
        if not self.opens or self.remaining <= 0:
            return False, None
        if self.period_s:
            time.sleep(self.period_s)
        self.remaining -= 1
        frame = np.full((*self.size, 3), self.served % 256, np.uint8)
        self.served += 1
        return True, frame

    def release(self) -> None:
        self.released = True
