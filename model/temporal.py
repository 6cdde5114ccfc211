"""Dense optical flow at low resolution, warping, and the temporal metrics of a mask sequence.

Shared by the live pipeline's stabiliser (realtime/output/stabilise.py) and
`endofuse evaluate` on a video, so a sequence is measured the same way everywhere.

Flow is *backward*: for each pixel p of the current frame, `flow[p]` points to
where that content was in the previous frame (cur(p) ~ prev(p + flow[p])), so
`warp_previous(prev_map, flow)` brings a map computed on the previous frame onto
the current one with a single `cv2.remap` (no holes, unlike forward splatting).
OpenCV's DIS optical flow (ultrafast preset) at the probability map's size
(a few dozen to 160 px) costs a fraction of a millisecond on one core.

Metrics of a sequence of shown masks (label-free; `TemporalMetrics`):
  consecutive IoU   mean IoU of each mask with the previous one (both empty: 1)
  mTC               mean IoU of the previous mask warped by the flow with the current one
                    (Varghese et al., CVPRW 2020), both masks at the flow's resolution
  toggles/min       changes of "lesion shown" (the mask is not empty) per minute of video
  short-run share   shown runs (consecutive frames with a lesion shown) shorter than
                    `SHORT_RUN_FRAMES`, over all shown runs; a run cut by the end counts
With labels: per-frame Dice/IoU (model.metrics), false runs (shown runs whose
masks never touch the label), and per lesion (a run of frames whose label is
not empty) the delay from its first labelled frame to the first frame whose
shown mask overlaps the label.
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from endofuse.model.metrics import overlap_metrics

SHORT_RUN_FRAMES = 6  # activations shorter than 6 frames: most false CADe activations (Brand et al.)
MIN_FLOW_SIDE = 16  # DIS needs 12+ px; a smaller map's flow is computed larger (warp_previous rescales it)


def flow_image(frame_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The grey uint8 image flow is computed on: the frame at `size` = (H, W), or a multiple of it when a
    side is under MIN_FLOW_SIDE.

    Grey first, then Gaussian-pyramid halvings (anti-aliased) down to under twice the size, then bilinear:
    a quarter of the time of one area resize of the colour frame (0.25 vs 1.6 ms for 540x480 -> 160x160).
    """
    scale = max(1, math.ceil(MIN_FLOW_SIDE / min(size)))
    h, w = size[0] * scale, size[1] * scale
    grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
    while grey.shape[0] >= 2 * h and grey.shape[1] >= 2 * w:
        grey = cv2.pyrDown(grey)
    return cv2.resize(grey, (w, h), interpolation=cv2.INTER_LINEAR)


class FlowEstimator:
    """Backward flow from each grey frame to the one before it (None for the first, or after a size change).

    One DIS instance per estimator: it keeps scratch buffers and is not thread-safe.
    """

    def __init__(self) -> None:
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._previous: np.ndarray | None = None

    def __call__(self, grey: np.ndarray) -> np.ndarray | None:
        previous, self._previous = self._previous, grey
        if previous is None or previous.shape != grey.shape:
            return None
        return backward_flow(previous, grey, self._dis)

    def reset(self) -> None:
        self._previous = None


def backward_flow(previous: np.ndarray, current: np.ndarray, dis=None) -> np.ndarray:
    """(H, W, 2) float32 (dx, dy): current(p) ~ previous(p + flow[p]); grey uint8 images of one size."""
    dis = dis or cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    return dis.calc(current, previous, None)


def warp_previous(previous: np.ndarray, flow: np.ndarray, nearest: bool = False,
                  border_value: float | None = None) -> np.ndarray:
    """`previous` (H, W[, C]) moved onto the current frame by a backward `flow` of any size.

    A flow of another size is resized and its vectors scaled. `nearest` for masks
    and labels; `border_value` None repeats the edge (a probability map), a number
    fills content that entered the view (0 for a mask: nothing shown there yet).
    """
    h, w = previous.shape[:2]
    fh, fw = flow.shape[:2]
    if (fh, fw) != (h, w):
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32([w / fw, h / fh])
    grid_x, grid_y = _grid(h, w)
    map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
    source = previous.view(np.uint8) if previous.dtype == bool else previous
    border = cv2.BORDER_REPLICATE if border_value is None else cv2.BORDER_CONSTANT
    warped = cv2.remap(source, map_x, map_y, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                       borderMode=border, borderValue=0 if border_value is None else border_value)
    return warped.view(bool) if previous.dtype == bool else warped


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y) of an h x w image (cached: the same few sizes every frame; never written to)."""
    return tuple(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks (model.metrics' definition: 1 when both are empty)."""
    return overlap_metrics(a, b)["iou"]


def runs(flags) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive True values."""
    out, start = [], None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i - start))
            start = None
    return out


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan


class TemporalMetrics:
    """Accumulates a sequence of shown masks (and optionally labels); `summary()` gives the report section.

    `add(mask, flow, label)`: `mask` the shown binary mask of this frame (any size,
    one size for the whole sequence), `flow` the backward flow from this frame to
    the previous one (any size; None: mTC skips this frame), `label` the true mask
    (same size as `mask`) when known.
    """

    def __init__(self, fps: float, short_run_frames: int = SHORT_RUN_FRAMES) -> None:
        self.fps, self.short_run_frames = float(fps), short_run_frames
        self.shown: list[bool] = []
        self.consecutive_iou: list[float] = []
        self.tc: list[float] = []
        self.dice: list[float] = []
        self.iou: list[float] = []
        self.labelled: list[bool] = []
        self.hit: list[bool] = []  # the shown mask overlaps the label
        self._previous: np.ndarray | None = None

    def add(self, mask: np.ndarray, flow: np.ndarray | None = None, label: np.ndarray | None = None) -> None:
        mask = np.asarray(mask).astype(bool, copy=False)
        if self._previous is not None and self._previous.shape == mask.shape:
            self.consecutive_iou.append(mask_iou(self._previous, mask))
            if flow is not None:  # at the flow's resolution: warping a full-size mask costs ~2 ms a frame
                size = (flow.shape[1], flow.shape[0])
                previous, current = (cv2.resize(m.view(np.uint8), size, interpolation=cv2.INTER_NEAREST)
                                     for m in (self._previous, mask))
                self.tc.append(mask_iou(warp_previous(previous, flow, nearest=True, border_value=0), current))
        self._previous = mask
        self.shown.append(bool(mask.any()))
        if label is not None:
            label = np.asarray(label).astype(bool, copy=False)
            scores = overlap_metrics(mask, label)
            self.dice.append(scores["dice"])
            self.iou.append(scores["iou"])
            self.labelled.append(bool(label.any()))
            self.hit.append(bool((mask & label).any()))

    def break_sequence(self) -> None:
        """The next mask does not follow the last one (a gap): no consecutive IoU or mTC across it."""
        self._previous = None

    @property
    def frames(self) -> int:
        return len(self.shown)

    def summary(self) -> dict:
        shown_runs = runs(self.shown)
        toggles = sum(a != b for a, b in zip(self.shown, self.shown[1:], strict=False))
        minutes = self.frames / self.fps / 60.0
        short = [length for _, length in shown_runs if length < self.short_run_frames]
        out = {
            "frames": self.frames,
            "consecutive_iou": _mean(self.consecutive_iou),
            "mtc": _mean(self.tc),
            "shown_frames": sum(self.shown),
            "shown_runs": len(shown_runs),
            "toggles": toggles,
            "toggles_per_min": toggles / minutes if minutes > 0 else math.nan,
            "short_runs": len(short),
            "short_run_share": len(short) / len(shown_runs) if shown_runs else math.nan,
            "short_run_frames": self.short_run_frames,
        }
        if self.labelled:
            out.update(self._labelled_summary(shown_runs))
        return out

    def _labelled_summary(self, shown_runs: list[tuple[int, int]]) -> dict:
        false_runs = [length for start, length in shown_runs if not any(self.hit[start:start + length])]
        delays, missed = [], 0
        for start, length in runs(self.labelled):
            first = next((i for i in range(start, start + length) if self.hit[i]), None)
            if first is None:
                missed += 1
            else:
                delays.append(first - start)
        return {
            "dice": _mean(self.dice),
            "iou": _mean(self.iou),
            "false_runs": len(false_runs),
            "short_false_runs": sum(length < self.short_run_frames for length in false_runs),
            "lesions": len(delays) + missed,
            "lesions_missed": missed,
            "first_shown_delay_frames": delays,
            "first_shown_delay_ms": [d / self.fps * 1000.0 for d in delays],
            "mean_first_shown_delay_frames": _mean(delays),
        }
