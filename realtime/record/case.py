"""`endofuse run --case DIR`: the case record of a run - lesion events, their key frames, the video, case.json.

    recorder = CaseRecorder("case/", fps=30, min_frames=3, info={...})   # a pipeline sink
    ... pipeline.run() ...                                                # write(result) per output frame
    # close(): case.json, review.html; key frames are written as each event ends

A lesion event (`EventTracker`) is a run of frames on which the overlay shows a
region, for at least `min_frames` such frames (the stabiliser's minimum on-time):
frames that carry no mask (an NBI look, a HOLD frame) do not end it, a mask-carrying
frame with nothing shown does. Per event the key frames are the sharpest
informative WLI frame shown with the lesion (no quality flag, highest
`quality.assess_quality` sharpness; the largest region when none is informative)
and, when the event was fused with a remembered NBI view, that NBI frame.

Every image in the record is the content-area crop with the pixels outside the
area's outline set to black, so the processor's on-screen text (patient name,
date) never enters it; the video is the same crop, with the overlay redrawn
from the mask (no HUD).
"""
from __future__ import annotations

import collections
import datetime as dt
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from endofuse import __version__
from endofuse.kernels.mask_overlay import paint
from endofuse.outputs import OutputFolder, write_image, write_json
from endofuse.realtime.input.content_area import ContentArea, full_frame
from endofuse.realtime.input.quality import assess_quality
from endofuse.realtime.output.frame_log import LOG_COLUMNS, FrameLogSink, log_row
from endofuse.realtime.output.overlay import OverlayStyle
from endofuse.realtime.pairing.nbi_memory import FUSED_MEMORY, NBI_VIEW
from endofuse.realtime.segment import FUSED, WLI_ONLY

CASE_FORMAT = 1
CASE_JSON, REVIEW_HTML, CASE_VIDEO, CASE_LOG, KEY_FRAME_DIR = (
    "case.json", "review.html", "overlay.mp4", "frames.csv", "keyframes")
MASK_MODES = (FUSED, FUSED_MEMORY, WLI_ONLY)  # the modes whose frames carry a mask (as pipeline.MASK_MODES)
NBI_CROPS_KEPT = 8  # the last NBI views kept for an event's NBI key frame (the memory fuses with a recent one)


def _int(value) -> int | None:
    return None if value in (None, "") else int(value)


@dataclass
class LesionEvent:
    """A lesion shown for at least the minimum on-time; times on the run's clock (the recording's for files)."""

    id: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    duration_s: float
    shown_frames: int
    peak_area_px: int
    modes: list[str]
    nbi_frames: list[int] = field(default_factory=list)  # the NBI frames fused with its frames
    key_frames: list[dict] = field(default_factory=list)


class EventTracker:
    """Lesion events from per-frame log rows (dicts with `LOG_COLUMNS` keys, as written or as read from CSV)."""

    def __init__(self, min_frames: int, fps: float) -> None:
        self.min_frames, self.period_s = int(min_frames), 1.0 / fps
        self.events: list[LesionEvent] = []
        self.open: LesionEvent | None = None
        self._pending_modes: list[str] = []  # no-mask frames inside an event count once it goes on

    def add(self, row: dict) -> tuple[LesionEvent | None, LesionEvent | None]:
        """Feed one row: (the event this frame shows, or None; an event that ended here and was kept, or None)."""
        mode, pixels = row["mode"], _int(row["mask_pixels"]) or 0
        if mode not in MASK_MODES:
            if self.open is not None:
                self._pending_modes.append(mode)
            return None, None
        if pixels == 0:
            return None, self.finish()
        frame, time_s = int(row["frame"]), float(row["time_s"] or 0.0)
        event = self.open
        if event is None:
            event = self.open = LesionEvent(len(self.events) + 1, frame, frame, time_s, time_s, 0.0, 0, 0, [])
        event.end_frame, event.end_s, event.shown_frames = frame, time_s, event.shown_frames + 1
        event.duration_s = round(event.end_s - event.start_s + self.period_s, 4)
        event.peak_area_px = max(event.peak_area_px, pixels)
        for seen in (*self._pending_modes, mode):
            if seen not in event.modes:
                event.modes.append(seen)
        self._pending_modes.clear()
        nbi = _int(row.get("nbi_frame"))
        if nbi is not None and nbi not in event.nbi_frames:
            event.nbi_frames.append(nbi)
        return event, None

    def finish(self) -> LesionEvent | None:
        """End the open event (end of the run, or nothing shown): kept when shown for the minimum on-time."""
        event, self.open = self.open, None
        self._pending_modes.clear()
        if event is None or event.shown_frames < self.min_frames:
            return None
        self.events.append(event)
        return event


def extract_events(rows, min_frames: int, fps: float) -> list[LesionEvent]:
    """Every lesion event of a per-frame log (rows as dicts, e.g. `csv.DictReader` of `run --log`)."""
    tracker = EventTracker(min_frames, fps)
    for row in rows:
        tracker.add(row)
    tracker.finish()
    return tracker.events


def content_crop(image: np.ndarray, area: ContentArea) -> np.ndarray:
    """A copy of the content area's box with every pixel outside its outline black: nothing from the border."""
    crop = np.array(area.crop(image))
    inside = area.shape_mask()[:crop.shape[0], :crop.shape[1]]
    crop[~inside] = 0
    return crop


@dataclass
class Candidate:
    """A key-frame candidate: the crops and what it was chosen by."""

    frame: int
    time_s: float
    informative: bool
    sharpness: float
    mask_pixels: int
    area: ContentArea
    raw: np.ndarray
    mask: np.ndarray
    mode: str = ""

    def better_than(self, other: Candidate | None) -> bool:
        """Informative beats flagged; then the sharper; among flagged ones the larger region."""
        if other is None:
            return True
        if self.informative != other.informative:
            return self.informative
        if self.informative:
            return self.sharpness > other.sharpness
        return self.mask_pixels > other.mask_pixels


class CaseRecorder:
    """A pipeline sink that writes the case folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, fps: float, min_frames: int, info: dict | None = None,
                 style: OverlayStyle | None = None, force: bool = False) -> None:
        from endofuse.realtime.output.sinks import VideoFileSink

        self.folder = Path(folder)
        self.output = OutputFolder(self.folder, "--case", force=force).prepare()
        (self.folder / KEY_FRAME_DIR).mkdir(exist_ok=True)
        self.fps, self.style, self.info = fps, style or OverlayStyle(), dict(info or {})
        self.tracker = EventTracker(min_frames, fps)
        self.log = FrameLogSink(self.folder / CASE_LOG, "--case frame log")
        self.video = VideoFileSink(self.folder / CASE_VIDEO, fps)
        self.started = dt.datetime.now(dt.timezone.utc)
        self.frames, self.modes = 0, collections.Counter()
        self._best: Candidate | None = None
        self._nbi_crops: collections.OrderedDict[int, tuple[float, np.ndarray]] = collections.OrderedDict()
        self._closed = False

    # -- per frame ---------------------------------------------------------
    def write(self, result) -> None:
        self.log.write(result)
        row = dict(zip(LOG_COLUMNS, log_row(result), strict=True))
        area = result.extras.get("content_area") or full_frame(result.frame.shape)
        raw = content_crop(result.frame, area)
        if result.mode == NBI_VIEW:
            self._nbi_crops[result.index] = (float(row["time_s"] or 0.0), raw)
            while len(self._nbi_crops) > NBI_CROPS_KEPT:
                self._nbi_crops.popitem(last=False)
        mask = np.array(area.crop(result.mask)) if result.mode in MASK_MODES else None
        video_frame = raw if mask is None else paint(raw, mask, self.style.alpha, self.style.color,
                                                      self.style.contour)
        self.video.write(_Frame(video_frame))
        shown, ended = self.tracker.add(row)
        if ended is not None:
            self._end_event(ended)
        if shown is not None:
            if shown.shown_frames == 1:  # a new event (a blip's candidate before it is forgotten)
                self._best = None
            self._consider(result, row, area, raw, mask)
        self.frames += 1
        self.modes[result.mode] += 1

    def _consider(self, result, row: dict, area: ContentArea, raw: np.ndarray, mask: np.ndarray) -> None:
        flags = result.extras.get("quality_flags", ())
        modality = result.extras.get("modality", "WLI") or "WLI"
        quality = assess_quality(raw)
        candidate = Candidate(result.index, float(row["time_s"] or 0.0), modality == "WLI" and not flags
                              and quality.ok, quality.sharpness, int(row["mask_pixels"]), area, raw, mask,
                              result.mode)
        if candidate.better_than(self._best):
            self._best = candidate

    def _end_event(self, event: LesionEvent) -> None:
        """Write the event's key frames now (a crash later keeps them) and update case.json."""
        best, self._best = self._best, None
        if best is not None:
            event.key_frames.append(self._write_key_frame(event, "wli", best.frame, best.time_s, best.raw,
                                                          best.mask, best.area, sharpness=best.sharpness,
                                                          informative=best.informative, mode=best.mode))
        for nbi in reversed(event.nbi_frames):  # the latest NBI view the event was fused with that is still kept
            if nbi in self._nbi_crops:
                time_s, crop = self._nbi_crops[nbi]
                event.key_frames.append(self._write_key_frame(event, "nbi", nbi, time_s, crop, None, None))
                break
        self._write_case_json()

    def _write_key_frame(self, event: LesionEvent, kind: str, frame: int, time_s: float, raw: np.ndarray,
                         mask: np.ndarray | None, area: ContentArea | None, **extra) -> dict:
        stem = f"{KEY_FRAME_DIR}/event{event.id:02d}_{kind}"
        entry = {"kind": kind, "frame": frame, "time_s": round(time_s, 4), "raw": f"{stem}_raw.png", **extra}
        write_image(self.folder / entry["raw"], raw)
        if mask is not None:
            entry |= {"overlay": f"{stem}_overlay.png", "mask": f"{stem}_mask.png",
                      "mask_pixels": int(np.count_nonzero(mask))}
            overlay = paint(raw, mask, self.style.alpha, self.style.color, self.style.contour)
            write_image(self.folder / entry["overlay"], overlay)
            write_image(self.folder / entry["mask"], (mask > 0).astype(np.uint8) * np.uint8(255))
        if area is not None:
            entry["content_area"] = [area.x, area.y, area.w, area.h]
        return entry

    # -- the record --------------------------------------------------------
    def record(self) -> dict:
        """case.json's content."""
        return {
            "case_format": CASE_FORMAT,
            "software": {"name": "endofuse", "version": __version__},
            "recorded_at": self.started.isoformat(timespec="seconds"),
            **self.info,
            "frames": {"count": self.frames, "fps": self.fps, "modes": dict(self.modes), "log": CASE_LOG},
            "video": CASE_VIDEO if self.video.frames else None,
            "events": [asdict(event) for event in self.tracker.events],
        }

    def _write_case_json(self) -> None:
        write_json(self.folder / CASE_JSON, self.record())

    def close(self) -> None:
        """End the open event, finalise the video, write case.json and the review page (also after Ctrl-C)."""
        if self._closed:
            return
        self._closed = True
        from endofuse.realtime.record.review import write_review_page

        try:
            ended = self.tracker.finish()
            if ended is not None:
                self._end_event(ended)
            self.log.close()
            try:
                self.video.close()
            finally:
                record = self.record()
                write_json(self.folder / CASE_JSON, record)
                write_review_page(self.folder, record)
        finally:
            self.output.commit()


@dataclass
class _Frame:
    overlay: np.ndarray  # what VideoFileSink writes


def load_case(folder: str | os.PathLike) -> dict:
    """case.json of a case folder (one line naming the folder when it is not one)."""
    import json

    from endofuse.errors import InvalidInputError, MissingFileError

    path = Path(folder) / CASE_JSON
    if not path.is_file():
        raise MissingFileError(f"'{folder}' is not a case folder (no {CASE_JSON}): give the folder of "
                               "`endofuse run --case DIR`")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"'{path}' cannot be read as JSON ({exc}): the case record is damaged") from None
    if record.get("case_format") != CASE_FORMAT:
        raise InvalidInputError(f"'{path}': case_format {record.get('case_format')!r} is not {CASE_FORMAT}: "
                                "record the case again with this endofuse version")
    return record
