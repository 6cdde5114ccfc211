"""A synthetic processor output: one endoscope stream switched by hand between WLI and NBI.

What a capture card receives from a video processor, rendered from
`model.synthetic.SyntheticScene`: the endoscopic image (octagonal) in a content
area inside a black border, on-screen text beside it (patient data, a running
clock, the mode), the scene moving, and a timeline of

    WLI (scene A) -> transition -> NBI (scene A) -> transition -> WLI (scene A) -> WLI (scene B: the scope moved)

with the scope held almost still while the clinician looks in NBI (the
camera moves at `NBI_LOOK_SPEED` of its pace there and for `NBI_LOOK_BACK_S`
after switching back, as at a real NBI look, so the WLI view after the switch
is the place NBI saw, and then the scope drifts away),
a transition of `TRANSITION_FRAMES` frames at each switch (a blended frame,
two near-black frames, a frame already near the new mode) and a few
uninformative frames (blurred, dark, glare-spotted). The mode colours are
matched to the real sample's means (`REAL_MEAN_BGR`), so the R/G ratio of the
synthetic WLI and NBI frames lies in the real frames' ranges.

`SyntheticEndoscope(...).truth` holds one row per frame (the `truth.csv` of
`endofuse synth --video S --endoscope`); `render(i)` returns the output frame
and its full-frame lesion mask. Deterministic per seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from endofuse.errors import InvalidOptionError
from endofuse.model.synthetic import CANVAS_MARGIN, SyntheticScene, _smooth_noise

Size = tuple[int, int]  # (H, W)

# The same strings as endofuse.realtime.modality (model/ does not import realtime/).
WLI, NBI, TRANSITION = "WLI", "NBI", "TRANSITION"
BLUR, GLARE, DARK = "blur", "glare", "dark"

# Mean BGR of the image (black border excluded) over the 5 real sample pairs: R/G 1.69 in WLI, 0.84 in NBI.
REAL_MEAN_BGR = {WLI: (118.4, 118.3, 200.0), NBI: (104.3, 117.2, 98.9)}
TRANSITION_FRAMES = 4
# The camera's pace during an NBI look (its transitions and the first NBI_LOOK_BACK_S back in WLI), relative to
# its pace elsewhere.
NBI_LOOK_SPEED, NBI_LOOK_BACK_S = 0.1, 1.0
# The recording's blurred frames: a heavy (motion) blur, so they still measure as blurred after mp4v compression,
# whose block noise adds fine detail back (at 360x640 and above; smaller clips are too coarse for the gate).
RECORDING_BLUR_SIGMA = 0.025
# Fine mucosal texture (a gain of 1 +- TEXTURE_GAIN, grain TEXTURE_CELL of the image side): real mucosa is never
# as smooth as the procedural canvas, and without it a sharp synthetic WLI frame measures as blurred.
TEXTURE_GAIN, TEXTURE_CELL = 0.12, 0.006
MIN_FRAMES = 60
TRUTH_COLUMNS = ("frame", "time_s", "modality", "x", "y", "w", "h", "informative", "defect")

# The timeline as fractions of the clip: (start, modality, scene).
SEGMENTS = ((0.0, WLI, 0), (0.25, NBI, 0), (0.45, WLI, 0), (0.75, WLI, 1))
# Uninformative frames: (start fraction, frames, defect).
DEFECTS = ((0.12, 3, BLUR), (0.35, 2, BLUR), (0.6, 3, DARK), (0.66, 2, GLARE), (0.75, 3, BLUR), (0.9, 2, DARK))


def degrade(image: np.ndarray, defect: str, seed: int = 0, blur_sigma: float = 0.01) -> np.ndarray:
    """`image` made uninformative on purpose: "blur" (Gaussian, sigma `blur_sigma` of the side), "glare" (six
    saturated spots, a 3 x 2 grid with jitter, over about a quarter of the image's centre) or "dark" (a
    quarter of the exposure)."""
    h, w = image.shape[:2]
    if defect == BLUR:
        return cv2.GaussianBlur(image, (0, 0), blur_sigma * min(h, w))
    if defect == DARK:
        return (image.astype(np.uint16) // 4).astype(np.uint8)
    if defect == GLARE:
        rng = np.random.default_rng(seed)
        out = image.copy()
        for cx in (0.33, 0.5, 0.67):
            for cy in (0.4, 0.6):
                centre = (int(w * (cx + rng.uniform(-0.02, 0.02))), int(h * (cy + rng.uniform(-0.02, 0.02))))
                axes = (int(w * rng.uniform(0.075, 0.09)), int(h * rng.uniform(0.045, 0.055)))
                cv2.ellipse(out, centre, axes, rng.uniform(-20, 20), 0, 360, (255, 255, 255), -1, cv2.LINE_AA)
        return out
    raise InvalidOptionError(f"defect must be {BLUR}, {GLARE} or {DARK}, got {defect!r}")


def default_box(size: Size) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a square content area 90% of the frame's height, on the right, like common processors."""
    h, w = size
    side = min(int(0.9 * h), int(0.6 * w)) // 2 * 2
    return w - side - int(0.05 * w), (h - side) // 2, side, side


def _colour_lut(image: np.ndarray, target_bgr) -> np.ndarray:
    """A per-channel lookup table that maps the mean colour of `image`'s lit pixels to `target_bgr`."""
    lit = image.max(axis=2) > 20
    gains = np.asarray(target_bgr, np.float32) / np.maximum(image[lit].reshape(-1, 3).mean(axis=0), 1.0)
    levels = np.arange(256, dtype=np.float32)[:, None] * gains[None, :]
    return np.clip(levels, 0, 255).astype(np.uint8)[None]  # (1, 256, 3), as cv2.LUT takes it


@dataclass(frozen=True)
class _Scene:
    scene: SyntheticScene
    luts: dict  # modality -> LUT
    texture: np.ndarray  # float32 gain on the scene's canvas, warped with its camera


class SyntheticEndoscope:
    """`frames` frames of a processor output of `size` (H, W) at `fps`; `render(i)` -> (frame_bgr, mask uint8 {0,1}).

    `box` (x, y, w, h): the content area (default `default_box`). `zoom_at` (a fraction of the clip, optional):
    from there on the processor zooms, the content area grows to fill the frame's height (a layout change).
    """

    def __init__(self, frames: int, size: Size = (720, 1280), fps: float = 30.0, seed: int = 0,
                 box: tuple[int, int, int, int] | None = None, zoom_at: float | None = None):
        if frames < MIN_FRAMES:
            raise InvalidOptionError(f"a synthetic endoscope clip needs at least {MIN_FRAMES} frames, got {frames}")
        h, w = size
        self.frames, self.size, self.fps, self.seed = int(frames), (int(h), int(w)), float(fps), seed
        self.box = tuple(int(v) for v in (box or default_box(self.size)))
        bx, by, bw, bh = self.box
        if bx < 0 or by < 0 or bx + bw > w or by + bh > h or min(bw, bh) < 32:
            raise InvalidOptionError(f"content box {self.box} must lie inside the {w}x{h} frame, at least 32x32")
        self.zoomed_box = None
        if zoom_at is not None:
            side = min(h, bx + bw) // 2 * 2
            self.zoomed_box = (bx + bw - side, (h - side) // 2, side, side)
        self._scenes: dict = {}
        self.truth = self._timeline(zoom_at)

    def _scene(self, index: int, box) -> _Scene:
        key = (index, box[2], box[3])
        if key not in self._scenes:
            # NBI aligned to WLI: one camera, one view, only the light changes
            scene = SyntheticScene(self.seed * 7919 + index, (box[3], box[2]), misregistration=(0.0, 0.0, 0.0))
            wli, nbi, _ = scene.frame(0.0)
            rng = np.random.default_rng([self.seed, index, 1])
            side = min(box[2], box[3])
            canvas = (int(box[3] * CANVAS_MARGIN), int(box[2] * CANVAS_MARGIN))
            texture = 1.0 + TEXTURE_GAIN * 2 * (_smooth_noise(rng, canvas, max(1.5, TEXTURE_CELL * side)) - 0.5)
            self._scenes[key] = _Scene(scene, {WLI: _colour_lut(wli, REAL_MEAN_BGR[WLI]),
                                               NBI: _colour_lut(nbi, REAL_MEAN_BGR[NBI])}, texture)
        return self._scenes[key]

    def _timeline(self, zoom_at: float | None) -> list[dict]:
        n = self.frames
        starts = [int(round(f * n)) for f, _, _ in SEGMENTS]
        rows = []
        camera_t, look_back = 0.0, int(round(NBI_LOOK_BACK_S * self.fps))
        for i in range(n):
            k = max(j for j, s in enumerate(starts) if s <= i)
            _, modality, scene = SEGMENTS[k]
            previous = SEGMENTS[k - 1][1] if k else modality
            in_transition = previous != modality and i - starts[k] < TRANSITION_FRAMES
            box = self.zoomed_box if zoom_at is not None and i >= int(round(zoom_at * n)) else self.box
            rows.append({"frame": i, "time_s": round(i / self.fps, 6),
                         "modality": TRANSITION if in_transition else modality,
                         "x": box[0], "y": box[1], "w": box[2], "h": box[3],
                         "informative": 0 if in_transition else 1, "defect": "",
                         "_scene": scene, "_from": previous, "_to": modality, "_step": i - starts[k],
                         "_camera_t": camera_t})
            nbi_look = modality == NBI or (previous == NBI and i - starts[k] < TRANSITION_FRAMES + look_back)
            camera_t += (NBI_LOOK_SPEED if nbi_look else 1.0) / self.fps
        for start, count, defect in DEFECTS:
            for i in range(int(round(start * n)), min(n, int(round(start * n)) + count)):
                if rows[i]["modality"] != TRANSITION:
                    rows[i].update(informative=0, defect=defect)
        return rows

    def truth_rows(self) -> list[dict]:
        """The public truth: one dict per frame with `TRUTH_COLUMNS`."""
        return [{k: row[k] for k in TRUTH_COLUMNS} for row in self.truth]

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame `i`: (BGR uint8 output frame of `size`, uint8 {0,1} lesion mask of `size`)."""
        row = self.truth[i]
        box = (row["x"], row["y"], row["w"], row["h"])
        s = self._scene(row["_scene"], box)
        t = i / self.fps
        camera_t = row["_camera_t"]
        wli, nbi, mask = s.scene.frame(camera_t)
        gain = cv2.warpAffine(s.texture, s.scene.camera(camera_t)[:2], (box[2], box[3]), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)[..., None]
        views = {m: cv2.LUT(np.clip(v * gain, 0, 255).astype(np.uint8), s.luts[m]) for m, v in ((WLI, wli), (NBI, nbi))}
        if row["modality"] == TRANSITION:
            image = self._transition(views[row["_from"]], views[row["_to"]], row["_step"])
        else:
            image = views[row["_to"]]
            if row["defect"]:
                image = degrade(image, row["defect"], seed=i, blur_sigma=RECORDING_BLUR_SIGMA)
        h, w = self.size
        frame = np.zeros((h, w, 3), np.uint8)
        full_mask = np.zeros((h, w), np.uint8)
        x, y, bw, bh = box
        frame[y:y + bh, x:x + bw] = image
        full_mask[y:y + bh, x:x + bw] = mask
        self._draw_text(frame, t, row)
        return frame, full_mask

    @staticmethod
    def _transition(old: np.ndarray, new: np.ndarray, step: int) -> np.ndarray:
        """The filter moving: a dimmed blend, two near-black frames, a dimmed frame near the new mode."""
        mix, gain = ((0.5, 0.6), (0.5, 0.04), (0.6, 0.04), (0.85, 0.7))[min(step, TRANSITION_FRAMES - 1)]
        blended = cv2.addWeighted(old, (1 - mix) * gain, new, mix * gain, 0.0)
        return blended

    def _draw_text(self, frame: np.ndarray, t: float, row: dict) -> None:
        """Patient data, a clock that runs with the video, the processor's mode label and settings (left panel)."""
        h, w = frame.shape[:2]
        scale = h / 720 * 0.7
        clock = 10 * 3600 + 12 * 60 + 5 + int(t)
        mode = row["_from"] if row["modality"] == TRANSITION else row["_to"]
        lines = ("ENDOFUSE SYNTH", f"ID {self.seed:06d}", "F 58Y", "06/12/2026",
                 f"{clock // 3600:02d}:{clock // 60 % 60:02d}:{clock % 60:02d}", f"{mode}  Enh A5",
                 f"Zoom x{1.0 if (row['x'], row['y']) == self.box[:2] else 1.5:.1f}", "CVP 30")
        x0 = int(0.03 * w)
        for j, line in enumerate(lines):
            y = int(0.08 * h + j * 38 * h / 720)
            cv2.putText(frame, line, (x0, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (230, 230, 230), max(1, int(scale * 2)),
                        cv2.LINE_AA)


def clip_frames(seconds: float, fps: float) -> int:
    n = int(round(seconds * fps))
    if not math.isfinite(seconds) or n < MIN_FRAMES:
        raise InvalidOptionError(f"--video {seconds:g} s at {fps:g} fps is {n} frames; a synthetic endoscope clip "
                                 f"needs at least {MIN_FRAMES}")
    return n
