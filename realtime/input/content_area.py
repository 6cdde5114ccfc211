"""Where the endoscopic image sits inside a processor's output frame.

A video processor's output is not the endoscopic image: the image fills a
content area (round, octagonal or rectangular) inside a black border, beside
on-screen text (patient data, settings, a clock). The model runs on the content
area's crop only, and the overlay is drawn only inside its shape.

`detect_content_area` finds it in one frame: the largest connected region of
non-black pixels (text characters are small separate regions), its convex
outline (so a dark lumen at the edge of the image does not bite into it) and
that outline's bounding box. `ContentAreaTracker` runs detection once, then only
checks a few hundred fixed pixels per frame: a band just outside the outline
(lit: the image grew, e.g. the processor's zoom or another scope) and a band
just inside it (black while the centre, or much of the frame outside the area,
is lit: the image shrank or moved; a dark frame is not a layout change). Only
after `confirm_frames` such frames in a row does it detect again.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from endofuse.errors import InvalidInputError, InvalidOptionError

DETECT_LEVEL = 14  # brightest channel above this = image, not border (compressed black stays below ~10)
MIN_AREA_FRACTION = 0.05  # a lit region smaller than this share of the frame is not an endoscopic image
CHECK_STEP_DIVISOR = 135  # the layout check samples one pixel per min(H, W) / 135 (8 px at 1080p)
GREW_FRACTION = 0.3  # lit share of the outside band that means the image grew
SHRANK_FRACTION = 0.6  # black share of the inside band that means the image shrank / moved
CENTRE_LIT_FRACTION = 0.5  # ... counted only when this share of the centre is lit (not a dark frame)
ELSEWHERE_LIT_FRACTION = 0.15  # ... or this share of the frame outside the area (the image moved; text is less)


@dataclass(frozen=True)
class ContentArea:
    """A box (`x`, `y`, `w`, `h` in frame pixels) and the image's convex `outline` in it.

    `outline`: polygon vertices (x, y) relative to the box's corner; empty = the whole box.
    """

    x: int
    y: int
    w: int
    h: int
    outline: tuple[tuple[int, int], ...] = ()

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """The box's pixels of `frame` (a view, not a copy)."""
        return frame[self.y:self.y + self.h, self.x:self.x + self.w]

    def shape_mask(self) -> np.ndarray:
        """bool (h, w) mask of the image inside the box (the crop's own coordinates)."""
        if not self.outline:
            return np.ones((self.h, self.w), bool)
        mask = np.zeros((self.h, self.w), np.uint8)
        cv2.fillPoly(mask, [np.asarray(self.outline, np.int32)], 1)
        return mask.astype(bool)

    def inside(self, frame_shape) -> np.ndarray:
        """bool mask of `frame_shape[:2]`: True on the endoscopic image (inside the box and its outline)."""
        h, w = int(frame_shape[0]), int(frame_shape[1])
        mask = np.zeros((h, w), bool)
        region = mask[self.y:self.y + self.h, self.x:self.x + self.w]
        region[...] = self.shape_mask()[:region.shape[0], :region.shape[1]]
        return mask

    def spec(self) -> str:
        """The `--content-area X,Y,W,H` spelling of the box."""
        return f"{self.x},{self.y},{self.w},{self.h}"

    def fits(self, frame_shape) -> bool:
        return self.x >= 0 and self.y >= 0 and self.x + self.w <= frame_shape[1] and self.y + self.h <= frame_shape[0]


def full_frame(frame_shape) -> ContentArea:
    return ContentArea(0, 0, int(frame_shape[1]), int(frame_shape[0]))


def _brightest_channel(frame_bgr: np.ndarray) -> np.ndarray:
    if frame_bgr.ndim == 2:
        return frame_bgr
    b, g, r = cv2.split(frame_bgr)
    return cv2.max(cv2.max(b, g), r)


def detect_content_area(frame_bgr: np.ndarray) -> ContentArea:
    """The endoscopic image in one output frame; the whole frame when no lit region of 5% of it or more is found."""
    if frame_bgr.ndim not in (2, 3) or frame_bgr.size == 0:
        raise InvalidInputError(f"detect_content_area needs an HxWx3 BGR frame, got shape {frame_bgr.shape}")
    h, w = frame_bgr.shape[:2]
    lit = (_brightest_channel(frame_bgr) > DETECT_LEVEL).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(lit, connectivity=8)
    if count < 2:
        return full_frame((h, w))
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[best, cv2.CC_STAT_AREA] < MIN_AREA_FRACTION * h * w:
        return full_frame((h, w))
    x, y, bw, bh = (int(v) for v in stats[best, :4])
    region = (labels[y:y + bh, x:x + bw] == best).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    # chords of a 1-px approximation stay inside the round outline: conservative for the overlay
    hull = cv2.approxPolyDP(hull, 1.0, True).reshape(-1, 2)
    hx, hy, hw, hh = cv2.boundingRect(hull)
    hull = hull - (hx, hy)
    x, y = x + hx, y + hy
    if cv2.contourArea(hull.astype(np.float32)) >= 0.99 * (hw - 1) * (hh - 1):
        return ContentArea(x, y, hw, hh)  # a rectangle: no outline needed
    return ContentArea(x, y, hw, hh, tuple((int(px), int(py)) for px, py in hull))


def parse_content_area(spec: str) -> str | ContentArea:
    """`--content-area`: "auto", "full" or "X,Y,W,H" (a ContentArea box, in output-frame pixels)."""
    text = str(spec).strip().lower()
    if text in ("auto", "full"):
        return text
    parts = text.split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        x = y = w = h = None
    if x is None or x < 0 or y < 0 or w < 16 or h < 16:
        raise InvalidOptionError(f"--content-area must be auto, full or X,Y,W,H (integers, X,Y >= 0, W,H >= 16), "
                                 f"got {spec!r}")
    return ContentArea(x, y, w, h)


class ContentAreaTracker:
    """The content area of a stream: `update(frame)` once per frame; detects again only when the layout changes.

    `spec` as `parse_content_area` takes it. With "auto", detection runs on the
    first frame, when the frame size changes, and after `confirm_frames` frames
    in a row whose border bands disagree with the current area. While no image
    has been found (a black stream) the whole frame is used and detection is
    retried every `confirm_frames` frames. `redetections` counts detections after
    the first; `changes` the times the area actually changed.
    """

    def __init__(self, spec: str = "auto", confirm_frames: int = 5):
        self.spec = spec if isinstance(spec, str) else spec.spec()
        self._fixed = parse_content_area(self.spec)
        self.confirm_frames = int(confirm_frames)
        self.area: ContentArea | None = None
        self.redetections = 0
        self.changes = 0
        self.frames = 0
        self._shape = None
        self._found = False
        self._strikes = 0
        self._patience = self.confirm_frames
        self._bands = None

    def update(self, frame_bgr: np.ndarray) -> ContentArea:
        self.frames += 1
        shape = frame_bgr.shape[:2]
        if isinstance(self._fixed, ContentArea):
            if shape != self._shape:
                if not self._fixed.fits(shape):
                    raise InvalidInputError(f"--content-area {self.spec} lies outside the {shape[1]}x{shape[0]} "
                                            f"frame (frame {self.frames})")
                self._set(self._fixed, shape)
        elif self._fixed == "full":
            if shape != self._shape:
                self._set(full_frame(shape), shape)
        elif self.area is None or shape != self._shape:
            self._detect(frame_bgr)
        elif not self._found:
            self._strikes += 1
            if self._strikes >= self.confirm_frames:
                self._detect(frame_bgr)
        elif self._layout_changed(frame_bgr):
            self._strikes += 1
            if self._strikes >= self._patience:
                before = self.area
                self._detect(frame_bgr)
                # the same area again (e.g. text in the band): wait longer before the next try
                self._patience = self._patience * 2 if self.area == before else self.confirm_frames
        else:
            self._strikes = 0
        return self.area

    def _detect(self, frame_bgr: np.ndarray) -> None:
        if self.area is not None:
            self.redetections += 1
        area = detect_content_area(frame_bgr)
        self._found = area != full_frame(frame_bgr.shape) or bool(
            (_brightest_channel(frame_bgr[::8, ::8]) > DETECT_LEVEL).mean() > 0.5)
        self._set(area, frame_bgr.shape[:2])

    def _set(self, area: ContentArea, shape) -> None:
        if self.area is not None and area != self.area:
            self.changes += 1
        self.area, self._shape, self._strikes = area, shape, 0
        if self._fixed == "auto":  # only auto re-detects, so only it reads the bands
            self._bands = _check_bands(area, shape)

    def _layout_changed(self, frame_bgr: np.ndarray) -> bool:
        def lit(band) -> float:
            ys, xs = band
            return float((frame_bgr[ys, xs].max(axis=1) > DETECT_LEVEL).mean()) if len(ys) else 0.0

        outside, inside, centre, elsewhere = self._bands
        if lit(outside) > GREW_FRACTION:
            return True
        # the centre and the rest of the frame are read only when the inside band has gone black
        return (1 - lit(inside)) > SHRANK_FRACTION and (lit(centre) > CENTRE_LIT_FRACTION
                                                         or lit(elsewhere) > ELSEWHERE_LIT_FRACTION)

    def summary(self) -> dict:
        """For the run report: the spec, the current area, detections after the first, changes."""
        area = self.area
        return {"spec": self.spec, "area": None if area is None else [area.x, area.y, area.w, area.h],
                "shape": None if area is None else ("rectangle" if not area.outline else "outline"),
                "found": self._found if self._fixed == "auto" else True,
                "redetections": self.redetections, "changes": self.changes, "frames": self.frames}


def _check_bands(area: ContentArea, shape) -> tuple:
    """Pixel coordinates (ys, xs) of what the per-frame check reads: outside band, inside band, centre, elsewhere."""
    h, w = int(shape[0]), int(shape[1])
    step = max(1, min(h, w) // CHECK_STEP_DIVISOR)
    grid = area.inside((h, w))[step // 2::step, step // 2::step].astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    grown1, grown3 = cv2.dilate(grid, kernel, iterations=1), cv2.dilate(grid, kernel, iterations=3)
    shrunk1, shrunk3 = cv2.erode(grid, kernel, iterations=1), cv2.erode(grid, kernel, iterations=3)
    centre = cv2.erode(grid, kernel, iterations=max(4, min(grid.shape) // 8))
    bands = []
    elsewhere = np.zeros_like(grid)
    elsewhere[::4, ::4] = 1 - grown3[::4, ::4]  # a coarser grid: a moved image is large
    for band in (grown3 & (1 - grown1), shrunk1 & (1 - shrunk3), centre, elsewhere):
        ys, xs = np.nonzero(band)
        bands.append((ys * step + step // 2, xs * step + step // 2))
    return tuple(bands)
