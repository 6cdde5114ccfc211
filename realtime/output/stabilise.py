"""The stabiliser: the stage between inference and overlay that keeps the overlay from blinking.

    stage = StabiliseStage(StabiliseConfig("ema"), fps=30)
    logits_to_draw, flow = stage(logits, frame_bgr)        # per frame, in order
    ... kernels.overlay(frame_bgr, logits_to_draw) ...
    stage.record(mask, flow)                                 # temporal metrics of what was shown

On the tumour probability map (1 - softmax background, at the model's output size):

* `--stabilise off`: the stage passes the logits through (the per-frame argmax mask);
* `ema`: exponential moving average, p_t = w * prob_t + (1 - w) * p_(t-1);
* `flow`: the same, with p_(t-1) first warped onto the current frame by a dense
  optical flow at the map's size (Motion-Corrected Moving Average, Mendel et al.);
* hysteresis: a pixel turns on above `on_threshold` and stays on while above
  `off_threshold` (< on_threshold);
* `min_frames` N: a connected region (8-connected) of on pixels is shown only once it
  has been present N consecutive frames; a region continues one of the previous frame
  that it overlaps (after warping, in `flow` mode) and takes the oldest age among
  them. So a blip shorter than N frames is never shown, and a new lesion appears
  N - 1 frames after it is first detected (N = 1: no delay).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from endofuse.errors import InvalidOptionError
from endofuse.model.temporal import FlowEstimator, TemporalMetrics, flow_image, warp_previous

STABILISE_MODES = ("off", "ema", "flow")


@dataclass(frozen=True)
class StabiliseConfig:
    """Stabiliser settings; the defaults come from benchmarks/stability.py (docs/pipeline.md)."""

    mode: str = "flow"
    on_threshold: float = 0.6
    off_threshold: float = 0.4
    min_frames: int = 3
    ema_weight: float = 0.5  # weight of the newest probability map

    def __post_init__(self) -> None:
        if self.mode not in STABILISE_MODES:
            raise InvalidOptionError(f"--stabilise must be one of {', '.join(STABILISE_MODES)}, got {self.mode!r}")
        for name in ("on_threshold", "off_threshold", "ema_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise InvalidOptionError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.off_threshold > self.on_threshold:
            raise InvalidOptionError(f"--off-threshold ({self.off_threshold}) must not exceed --on-threshold "
                                     f"({self.on_threshold})")
        if self.ema_weight == 0.0:
            raise InvalidOptionError("ema_weight must be > 0 (0 would never let a new frame in)")
        if int(self.min_frames) != self.min_frames or self.min_frames < 1:
            raise InvalidOptionError(f"--min-frames must be an integer >= 1, got {self.min_frames}")


def tumour_probability(logits) -> np.ndarray:
    """(h, w) float32 probability of any class but background, from (C, h, w) or (1, C, h, w) logits."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()  # the model-size map is small; the frame stays where it is
    logits = np.asarray(logits, np.float32)
    if logits.ndim == 4:
        logits = logits[0]
    if logits.shape[0] == 2:  # softmax over two classes = sigmoid of their difference
        return (1.0 / (1.0 + np.exp(logits[0] - logits[1]))).astype(np.float32)
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (1.0 - shifted[0] / shifted.sum(axis=0)).astype(np.float32)


class Stabiliser:
    """EMA (optionally flow-warped), hysteresis and per-region minimum persistence on probability maps."""

    def __init__(self, config: StabiliseConfig = StabiliseConfig()) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.smoothed: np.ndarray | None = None
        self.present: np.ndarray | None = None  # hysteresis state (before min-frames)
        self.age: np.ndarray | None = None  # per pixel: consecutive frames its region has been present
        self.shown: np.ndarray | None = None
        self.margin: np.ndarray | None = None

    def update(self, prob: np.ndarray, flow: np.ndarray | None = None) -> np.ndarray:
        """The shown mask (bool, prob's size) for this frame; `flow`: backward flow to the previous frame."""
        cfg = self.config
        prob = np.asarray(prob, np.float32)
        if cfg.mode == "off":
            self.smoothed, self.shown = prob, prob > 0.5
            self.margin = prob - np.float32(0.5)
            return self.shown
        if self.smoothed is None or self.smoothed.shape != prob.shape:
            self.reset()
            smoothed, present, age = prob, np.zeros(prob.shape, bool), np.zeros(prob.shape, np.int32)
        else:
            smoothed, present, age = self.smoothed, self.present, self.age
            if cfg.mode == "flow" and flow is not None:
                smoothed = warp_previous(smoothed, flow)
                present = warp_previous(present, flow, nearest=True, border_value=0)
                age = warp_previous(age, flow, nearest=True, border_value=0)
            w = np.float32(cfg.ema_weight)
            smoothed = w * prob + (1 - w) * smoothed
        threshold = np.where(present, np.float32(cfg.off_threshold), np.float32(cfg.on_threshold))
        present = smoothed > threshold
        age = region_age(present, age, cfg.min_frames)
        shown = present & (age >= cfg.min_frames)
        self.smoothed, self.present, self.age, self.shown = smoothed, present, age, shown
        # Drawn through the ordinary overlay: bilinear upsampling of this margin > 0 is the shown mask with
        # smooth edges; -1 keeps a not-yet-shown region out entirely.
        self.margin = np.where(shown, smoothed - threshold, np.float32(-1.0)).astype(np.float32)
        return shown

    def display_logits(self) -> np.ndarray:
        """(2, h, w) logits whose argmax is the shown mask: what `kernels.overlay` draws."""
        return np.stack([np.zeros_like(self.margin), self.margin])


def region_age(present: np.ndarray, previous_age: np.ndarray, cap: int) -> np.ndarray:
    """Per pixel, 1 + the oldest previous age under its 8-connected region (0 off the regions), capped at `cap`."""
    count, labels = cv2.connectedComponents(present.view(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(present.shape, np.int32)
    # oldest previous age per region, counted level by level (ages are capped, so a few bincounts; np.maximum.at
    # is ten times slower)
    oldest = np.zeros(count, np.int32)
    for level in range(1, cap):
        oldest += np.bincount(labels[previous_age >= level], minlength=count) > 0
    ages = np.minimum(oldest + 1, cap).astype(np.int32)
    ages[0] = 0
    return ages[labels]


class StabiliseStage:
    """One pipeline run's stage: flow at the map's size, the stabiliser, and the temporal metrics of what was shown.

    The flow is computed in every mode: the temporal metrics (mTC) need it too.
    """

    def __init__(self, config: StabiliseConfig, fps: float) -> None:
        self.config = config
        self.stabiliser = Stabiliser(config)
        self.flow = FlowEstimator()
        self.metrics = TemporalMetrics(fps)

    def __call__(self, logits, frame_bgr: np.ndarray) -> tuple[object, np.ndarray | None]:
        """(logits to draw, backward flow to the previous frame at the map's size or None)."""
        shape = tuple(logits.shape[-2:])
        flow = self.flow(flow_image(frame_bgr, shape))
        if self.config.mode == "off":
            return logits, flow  # the per-frame argmax, exactly as without the stage
        self.stabiliser.update(tumour_probability(logits), flow)
        return self.stabiliser.display_logits(), flow

    def reset(self) -> None:
        """Forget the previous frames (an endoscope stream's NBI look, a new content area): the stabiliser and the
        flow start afresh, and the temporal metrics do not compare across the gap."""
        self.stabiliser.reset()
        self.flow.reset()
        self.metrics.break_sequence()

    def record(self, mask: np.ndarray, flow: np.ndarray | None, label: np.ndarray | None = None) -> None:
        self.metrics.add(mask, flow, label)

    def summary(self) -> dict:
        cfg = self.config
        settings = {"stabilise": cfg.mode}
        if cfg.mode != "off":
            settings |= {"on_threshold": cfg.on_threshold, "off_threshold": cfg.off_threshold,
                         "min_frames": cfg.min_frames, "ema_weight": cfg.ema_weight}
        return {"settings": settings, **self.metrics.summary()}


def add_arguments(parser, timing: bool = True) -> None:
    """The stage's flags, shared by `run`, `bench` and `evaluate` (no timing); defaults from `StabiliseConfig`."""
    from endofuse.realtime.output.timing import OVERLAY_TIMINGS

    d = StabiliseConfig()
    parser.add_argument("--stabilise", default=d.mode, choices=STABILISE_MODES,
                        help=f"temporal stabilising of the tumour probability before the overlay: off (per-frame "
                             f"mask), ema (moving average), flow (moving average of the previous map warped by optical "
                             f"flow) (default: {d.mode})")
    parser.add_argument("--on-threshold", type=float, default=d.on_threshold,
                        help=f"probability above which a pixel turns on (default {d.on_threshold})")
    parser.add_argument("--off-threshold", type=float, default=d.off_threshold,
                        help=f"probability below which a shown pixel turns off (default {d.off_threshold})")
    parser.add_argument("--min-frames", type=int, default=d.min_frames, metavar="N",
                        help=f"a lesion region is shown once present N consecutive frames: it appears N - 1 frames "
                             f"later, blips shorter than N never show (default {d.min_frames})")
    if not timing:
        return
    parser.add_argument("--overlay-timing", default="sync", choices=OVERLAY_TIMINGS,
                        help="sync: the video waits for the mask of its own frame (overlay age 0); live: the newest "
                             "frame with the newest mask (age = the inference lag, shown in the HUD) (default: sync)")


def config_from_args(args) -> StabiliseConfig:
    """The stage's settings from parsed flags (checked: one clear line on a bad value)."""
    return StabiliseConfig(args.stabilise, args.on_threshold, args.off_threshold, args.min_frames)
