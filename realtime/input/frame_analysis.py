"""The per-frame analysis of one endoscope stream, in one call: content area, modality, quality.

`FrameAnalyzer.analyze(frame)` runs the three stages in order on a processor
output frame: where the image is (`ContentAreaTracker`), which light it is in
(`ModalityTracker`, on the content crop), and whether it is worth segmenting
(`assess_quality`, on the same crop). `time_analysis` measures what it costs
per frame (`benchmarks/endoscope_frames.py`, `endofuse bench --endoscope`).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from endofuse.machine import time_calls
from endofuse.realtime.input.content_area import ContentArea, ContentAreaTracker, detect_content_area
from endofuse.realtime.input.quality import BLUR, DARK, GLARE, Quality, QualityThresholds, assess_quality
from endofuse.realtime.modality import TRANSITION, ModalityReading, ModalityTracker, read_modality


@dataclass(frozen=True)
class FrameAnalysis:
    """One frame: its content `area`, the stream's `modality` (with hysteresis), this frame's own `reading`,
    its `quality`."""

    area: ContentArea
    modality: str
    reading: ModalityReading
    quality: Quality

    @property
    def segmentable(self) -> bool:
        """A settled WLI/NBI frame that passed the quality gate: worth a new mask."""
        return self.modality != TRANSITION and self.quality.ok

    def crop(self, frame: np.ndarray) -> np.ndarray:
        return self.area.crop(frame)


class FrameAnalyzer:
    """`analyze(frame)` once per output frame; `summary()` for the run report."""

    def __init__(self, content_area: str = "auto", switch_frames: int = 3,
                 thresholds: QualityThresholds | None = None):
        self.areas = ContentAreaTracker(content_area)
        self.modality = ModalityTracker(switch_frames)
        self.thresholds = thresholds or QualityThresholds()
        self._flags = {BLUR: 0, GLARE: 0, DARK: 0}
        self._frames = 0
        self._held = 0

    def analyze(self, frame_bgr: np.ndarray) -> FrameAnalysis:
        area = self.areas.update(frame_bgr)
        crop = area.crop(frame_bgr)
        mode = self.modality.update(crop)
        quality = assess_quality(crop, self.thresholds)
        self._frames += 1
        self._held += not quality.ok
        for flag in quality.flags:
            self._flags[flag] += 1
        return FrameAnalysis(area, mode, self.modality.last_reading, quality)

    def summary(self) -> dict:
        return {"content_area": self.areas.summary(), "modality": self.modality.summary(),
                "quality": {"frames": self._frames, "flagged": self._held, **self._flags,
                            "thresholds": vars(self.thresholds)}}


def time_analysis(frames: list[np.ndarray], rounds: int = 3) -> dict:
    """CPU ms per frame (thread time) of `FrameAnalyzer.analyze` over `frames`, and of each stage alone.

    Every round replays all frames through one analyzer (content area detected on the first frame of the
    first round only); the stages are then timed alone on the same frames and crops.
    """
    clock = time.thread_time
    analyzer = FrameAnalyzer()
    analyzer.analyze(frames[0])  # the one detection, outside the timed calls
    frame_iter = iter(frames * (rounds + 1))
    total = time_calls(lambda: analyzer.analyze(next(frame_iter)), len(frames) * rounds, warmup=len(frames),
                       clock=clock)
    area = analyzer.areas.area
    crops = [area.crop(f) for f in frames]
    stages = {}
    for name, fn, items in (("content area check", analyzer.areas.update, frames),
                            ("modality", read_modality, crops), ("quality", assess_quality, crops)):
        it = iter(items * (rounds + 1))
        stages[name] = time_calls(lambda fn=fn, it=it: fn(next(it)), len(items) * rounds, warmup=len(items),
                                  clock=clock)
    detect_from = iter(frames * 4)
    detection = time_calls(lambda: detect_content_area(next(detect_from)), min(len(frames), 10) * 2,
                           warmup=1, clock=clock)

    def stats(ms: list[float]) -> dict:
        return {"mean": statistics.fmean(ms), "p50": statistics.median(ms),
                "p99": sorted(ms)[min(len(ms) - 1, int(0.99 * len(ms)))]}

    return {"frames": len(frames), "rounds": rounds, "frame_size": list(frames[0].shape[:2]),
            "content_area": [area.x, area.y, area.w, area.h], "redetections": analyzer.areas.redetections,
            "per_frame_ms": stats(total), "stages_ms": {k: stats(v) for k, v in stages.items()},
            "detection_ms": stats(detection)}
