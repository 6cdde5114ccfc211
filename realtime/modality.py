"""WLI, NBI or a transition, frame by frame, from one processor output.

NBI is an illumination mode the clinician switches by hand, so one stream carries
both modes one after the other. The two differ plainly in colour: NBI's narrow
blue/green bands make the mucosa teal, WLI's white light makes it red. In the 5
real sample pairs (`../shared/data/wli-nbi-sample`) the mean R/G ratio of the
image is 1.51-1.90 in WLI and 0.66-1.09 in NBI, so one ratio with a band between
the two ranges decides a frame:

- R/G >= `WLI_MIN_RG` (1.35) -> WLI; R/G <= `NBI_MAX_RG` (1.20) -> NBI;
- in between (a blended frame while the filter moves), too dark (mean level
  below `DARK_LEVEL`) or too few usable pixels -> TRANSITION.

The statistics use a strided sample of about `SAMPLE_SIDE` x `SAMPLE_SIDE`
pixels of the content-area crop (a view: nothing is copied at full resolution),
and ignore black pixels (the border and corners of a round/octagonal image) and
saturated ones (specular glare is white in both modes).

`ModalityTracker` adds hysteresis: a switch is taken only after `switch_frames`
consistent frames, and until then (and on every transition/dark frame) it says
TRANSITION, so no mask is made from a frame whose mode is not settled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from endofuse.errors import InvalidInputError, InvalidOptionError

WLI = "WLI"
NBI = "NBI"
TRANSITION = "TRANSITION"
MODALITIES = (WLI, NBI, TRANSITION)

WLI_MIN_RG = 1.35  # real WLI: 1.51-1.90 (10% margin)
NBI_MAX_RG = 1.20  # real NBI: 0.66-1.09 (10% margin)
DARK_LEVEL = 20.0  # mean of (B+G+R)/3 over the crop, 0..255; real sample frames: 91-166
BLACK_LEVEL = 24  # a pixel whose brightest channel is at most this is border / black
SATURATED_LEVEL = 245  # a pixel whose darkest channel is at least this is glare
MIN_USABLE = 0.2  # fraction of sampled pixels that must be neither black nor saturated
SAMPLE_SIDE = 32  # ~1000 pixels: the mean colour of a frame is stable long before that


def sample_grid(image: np.ndarray, side: int = SAMPLE_SIDE) -> np.ndarray:
    """A strided view of about `side` x `side` pixels of `image` (no copy): cheap statistics at any resolution."""
    h, w = image.shape[:2]
    sy, sx = max(1, h // side), max(1, w // side)
    return image[sy // 2::sy, sx // 2::sx]


@dataclass(frozen=True)
class ModalityReading:
    """One frame's reading: its label and the statistics it was decided from.

    `rg_ratio`: sum of R over sum of G over the usable pixels (NaN when too few);
    `brightness`: mean (B+G+R)/3 of all sampled pixels of the crop, 0..255.
    """

    label: str
    rg_ratio: float
    brightness: float


def read_modality(content_bgr: np.ndarray) -> ModalityReading:
    """Classify one frame's content-area crop (BGR uint8) as WLI, NBI or TRANSITION by its colour statistics."""
    if content_bgr.ndim != 3 or content_bgr.shape[2] != 3 or content_bgr.size == 0:
        raise InvalidInputError(f"read_modality needs an HxWx3 BGR image, got shape {content_bgr.shape}")
    sample = np.ascontiguousarray(sample_grid(content_bgr))  # one small gather, then per-channel views
    b, g, r = sample[..., 0], sample[..., 1], sample[..., 2]
    brightness = float(sample.mean())
    usable = (np.maximum(np.maximum(b, g), r) > BLACK_LEVEL) & (np.minimum(np.minimum(b, g), r) < SATURATED_LEVEL)
    if brightness < DARK_LEVEL or usable.mean() < MIN_USABLE:
        return ModalityReading(TRANSITION, float("nan"), brightness)
    rg = float(r[usable].sum(dtype=np.int64) / max(int(g[usable].sum(dtype=np.int64)), 1))
    if rg >= WLI_MIN_RG:
        label = WLI
    elif rg <= NBI_MAX_RG:
        label = NBI
    else:
        label = TRANSITION
    return ModalityReading(label, rg, brightness)


class ModalityTracker:
    """The stable modality of a stream, with hysteresis; `update(content_bgr)` once per frame.

    The first mode, and every switch, is taken after `switch_frames` consistent
    readings; until then, and on every TRANSITION reading, `update` returns
    TRANSITION. A TRANSITION reading does not break a pending switch (a switch
    passes through dark and blended frames); a reading of the other mode does.
    The returned mode therefore lags the stream by `switch_frames - 1` frames
    after each switch.
    """

    def __init__(self, switch_frames: int = 3):
        if int(switch_frames) != switch_frames or switch_frames < 1:
            raise InvalidOptionError(f"switch_frames must be an integer >= 1, got {switch_frames}")
        self.switch_frames = int(switch_frames)
        self.stable: str | None = None
        self.switches = 0
        self.last_reading: ModalityReading | None = None
        self._candidate: str | None = None
        self._count = 0
        self._frames = dict.fromkeys(MODALITIES, 0)

    def update(self, content_bgr: np.ndarray) -> str:
        """Read one frame and return the stream's mode for it: WLI, NBI or TRANSITION."""
        reading = read_modality(content_bgr)
        self.last_reading = reading
        return self.update_label(reading.label)

    def update_label(self, label: str) -> str:
        """The hysteresis alone, from an already-made reading's label (what `update` does after reading)."""
        if label not in MODALITIES:
            raise InvalidOptionError(f"modality label must be one of {', '.join(MODALITIES)}, got {label!r}")
        if label == TRANSITION:
            mode = TRANSITION
        elif label == self.stable:
            self._candidate, self._count = None, 0
            mode = label
        else:
            if label != self._candidate:
                self._candidate, self._count = label, 0
            self._count += 1
            if self._count >= self.switch_frames:
                if self.stable is not None:
                    self.switches += 1
                self.stable, self._candidate, self._count = label, None, 0
                mode = label
            else:
                mode = TRANSITION
        self._frames[mode] += 1
        return mode

    def summary(self) -> dict:
        """For the run report: frames per returned mode, switches taken, the current stable mode."""
        return {"frames": dict(self._frames), "switches": self.switches, "stable": self.stable,
                "switch_frames": self.switch_frames}
