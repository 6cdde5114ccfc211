"""A cheap gate for frames not worth segmenting: blur, glare, underexposure.

Real laryngoscopy video has many uninformative frames (the NBI-InfFrames
classes: informative / blurred / saliva-specular / underexposed). Three
measures, each on a strided sample of the centre of the content-area crop (the
middle `CENTRE` share of each side: inside any round/octagonal outline, so the
black corners and the image's own edge never count) of about `SAMPLE_SIDE`
pixels a side, whatever the resolution:

- `sharpness`: variance of the Laplacian of the green channel, less
  `NOISE_LAPLACIAN_VAR` (what noise of about 0.7 grey levels gives: 8-bit
  rounding, sensor and video-codec noise, which are not detail), divided by the
  variance of the green channel itself. Blur removes fine detail (the
  Laplacian) much more than coarse contrast, and the ratio does not change with
  gain. Green carries most of the detail in both WLI and NBI.
- `glare_fraction`: share of pixels whose darkest channel is at least
  `GLARE_LEVEL` (saturated white in every channel: specular reflection on
  saliva or mucosa; brown/teal NBI and red WLI tissue never are).
- `brightness`: mean (B+G+R)/3, 0..255.

The thresholds (`QualityThresholds`) were set on the 10 real sample frames and
the same frames degraded on purpose (docs/pipeline.md has the table): every
original passes, every degraded copy is flagged.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from endofuse.errors import InvalidInputError

CENTRE = 0.6  # the measured box: the middle 60% of each side (inside an octagon cut at 20% of the side)
SAMPLE_SIDE = 128
GLARE_LEVEL = 235
# Laplacian variance of noise, not detail: 20 sigma^2 for white noise of sigma ~0.7 levels. Without it the
# compression noise of an mp4 lifts heavily blurred frames to the level of the softest sharp real frames.
NOISE_LAPLACIAN_VAR = 10.0

BLUR, GLARE, DARK = "blur", "glare", "dark"


@dataclass(frozen=True)
class QualityThresholds:
    """When a frame is flagged.

    Measured on the 10 real sample frames at their own resolution (710-1726 px wide):

    - `min_sharpness` 0.008: the originals measure 0.022-1.9; a Gaussian blur of sigma 1% of the image side
      (8-11 px, a moderate motion blur) takes them to 0 (the synthetic recording's blurred frames, after
      mp4v compression: at most 0.006; its sharp frames at least 0.05).
    - `max_glare_fraction` 0.16: the originals have 0-13% saturated pixels in the centre (the glariest is an
      informative WLI frame of wet mucosa); six glare spots over about a quarter of the centre give 20-30%.
    - `min_brightness` 60: the originals measure 99-172 in the centre; at a quarter of their exposure 24-42.
    """

    min_sharpness: float = 0.008
    max_glare_fraction: float = 0.16
    min_brightness: float = 60.0


@dataclass(frozen=True)
class Quality:
    """The measures of one frame and the flags they raised (a subset of "blur", "glare", "dark", in that order)."""

    flags: tuple[str, ...]
    sharpness: float
    glare_fraction: float
    brightness: float

    @property
    def ok(self) -> bool:
        """True when the frame is worth segmenting (no flag)."""
        return not self.flags


def centre_sample(content_bgr: np.ndarray, centre: float = CENTRE, side: int = SAMPLE_SIDE) -> np.ndarray:
    """A strided view of about `side` x `side` pixels of the middle `centre` share of each side (no copy)."""
    h, w = content_bgr.shape[:2]
    y0, x0 = int(h * (1 - centre) / 2), int(w * (1 - centre) / 2)
    box = content_bgr[y0:h - y0, x0:w - x0]
    step = max(1, min(box.shape[:2]) // side)
    return box[::step, ::step]


def assess_quality(content_bgr: np.ndarray, thresholds: QualityThresholds = QualityThresholds()) -> Quality:
    """Measure one content-area crop (BGR uint8) and flag blur, glare and underexposure."""
    if content_bgr.ndim != 3 or content_bgr.shape[2] != 3 or min(content_bgr.shape[:2]) < 8:
        raise InvalidInputError(f"assess_quality needs an HxWx3 BGR image of at least 8x8, got {content_bgr.shape}")
    sample = np.ascontiguousarray(centre_sample(content_bgr))  # one small gather, then per-channel views
    b, g, r = sample[..., 0], sample[..., 1], sample[..., 2]
    green = g.astype(np.float32)
    brightness = float(sample.mean())
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(green, cv2.CV_32F))
    _, green_std = cv2.meanStdDev(green)
    sharpness = max(0.0, float(lap_std[0, 0]) ** 2 - NOISE_LAPLACIAN_VAR) / max(float(green_std[0, 0]) ** 2, 1.0)
    glare_fraction = float((np.minimum(np.minimum(b, g), r) >= GLARE_LEVEL).mean())
    flags = []
    if sharpness < thresholds.min_sharpness:
        flags.append(BLUR)
    if glare_fraction > thresholds.max_glare_fraction:
        flags.append(GLARE)
    if brightness < thresholds.min_brightness:
        flags.append(DARK)
    return Quality(tuple(flags), sharpness, glare_fraction, brightness)
