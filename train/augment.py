"""Paired augmentations for WLI/NBI/mask triples (the `default` recipe; off in `paper`).

Frames are HxWx3 colour images (uint8, or float32 in [0, 1] as the training
dataset hands them over after preprocessing); the mask is HxW uint8.

Geometry (flip, small affine) is drawn once and applied to all three arrays, so
the mask stays aligned to the WLI frame and the NBI frame keeps its relation to
it. Colour jitter is drawn independently per modality, because the two
illuminations vary independently in real data.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PairAugment:
    flip_p: float = 0.5
    max_rotate_deg: float = 12.0
    max_scale: float = 0.1
    max_shift: float = 0.06  # fraction of the side
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15

    def geometry(self, rng: np.random.Generator, size: tuple[int, int]) -> tuple[bool, np.ndarray]:
        """(flip, 2x3 affine) for an image of (H, W)."""
        h, w = size
        flip = bool(rng.random() < self.flip_p)
        angle = rng.uniform(-self.max_rotate_deg, self.max_rotate_deg)
        scale = 1.0 + rng.uniform(-self.max_scale, self.max_scale)
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        matrix[:, 2] += rng.uniform(-self.max_shift, self.max_shift, 2) * np.array([w, h])
        return flip, matrix

    def colour(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast and saturation jitter on a colour image: uint8, or float in [0, 1]."""
        top = 255.0 if image.dtype == np.uint8 else 1.0
        img = image.astype(np.float32)
        b = 1.0 + rng.uniform(-self.brightness, self.brightness)
        c = 1.0 + rng.uniform(-self.contrast, self.contrast)
        s = 1.0 + rng.uniform(-self.saturation, self.saturation)
        grey = img.mean(axis=2, keepdims=True)
        img = grey + (img - grey) * s
        img = (img - img.mean()) * c + img.mean()
        return np.clip(img * b, 0, top).astype(image.dtype)

    def __call__(self, wli: np.ndarray, nbi: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        flip, matrix = self.geometry(rng, wli.shape[:2])
        out = []
        for array, interp in ((wli, cv2.INTER_LINEAR), (nbi, cv2.INTER_LINEAR), (mask, cv2.INTER_NEAREST)):
            h, w = array.shape[:2]
            if flip:
                array = array[:, ::-1]
            array = cv2.warpAffine(np.ascontiguousarray(array), matrix, (w, h), flags=interp,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            out.append(array)
        wli, nbi, mask = out
        return self.colour(wli, rng), self.colour(nbi, rng), mask
