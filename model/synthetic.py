"""A procedural WLI/NBI endoscopy generator for tests, demos and benchmarks.

Each scene is a tissue canvas (smooth colour/shading variation, branching
vessels, a dark lumen, specular highlights) with one lesion. The lesion carries
a dense micro-vessel pattern that is strong in NBI and faint in WLI, and the
WLI frame also shows "decoy" patches with the lesion's pale tint but no
micro-vessels: from WLI alone the lesion is ambiguous, with NBI it is not, so
fusing the two measurably helps. The NBI frame is slightly mis-registered (a
small per-scene affine), both frames have the octagonal black border of real
endoscopes, and the mask is aligned to the WLI frame.

`SyntheticScene(seed, size).frame(t)` renders the canvas once, then every frame
is only a few `cv2.warpAffine` calls for a smoothly moving camera (a 480x540
pair takes a few milliseconds), so it doubles as a live 30 fps source.
`make_pair(seed, size)` returns an independent still pair per seed.

Everything is deterministic per seed. Frames are BGR uint8 (OpenCV order);
masks are uint8 in {0, 1}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from endofuse.errors import InvalidOptionError

Size = tuple[int, int]  # (H, W)

# Mean colours in BGR, 0..255. WLI: pink-red mucosa; NBI: teal mucosa with brown
# superficial capillaries (what NBI's 415/540 nm bands make visible).
WLI_COLORS = {
    "tissue": (95, 100, 205),
    "vessel": (45, 40, 150),
    "lesion_tint": (185, 195, 235),
    "micro": (60, 55, 165),
}
NBI_COLORS = {
    "tissue": (135, 150, 70),
    "vessel": (110, 95, 25),
    "lesion_tint": (120, 135, 95),
    "micro": (35, 55, 95),
}
# How strongly each layer shows per modality (alpha of the blend).
WLI_STRENGTH = {"vessel": 0.45, "lesion_tint": 0.45, "micro": 0.12, "decoy": 0.45}
NBI_STRENGTH = {"vessel": 0.75, "lesion_tint": 0.25, "micro": 0.85, "decoy": 0.06}

CANVAS_MARGIN = 1.5  # canvas is this much larger than the frame, so the camera can move
BORDER_CUT = 0.2  # octagon corner cut as a fraction of min(H, W)


def _smooth_noise(rng: np.random.Generator, shape: Size, cell: float) -> np.ndarray:
    """Value noise in [0, 1]: random values on a coarse grid, cubic-upsampled."""
    h, w = shape
    gh, gw = max(2, int(round(h / cell)) + 1), max(2, int(round(w / cell)) + 1)
    grid = rng.random((gh, gw), dtype=np.float32)
    noise = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(noise, 0.0, 1.0)


def _blob_polygon(rng: np.random.Generator, center: tuple[float, float], radius: float, points: int = 48) -> np.ndarray:
    """An irregular closed outline: a circle whose radius has a few random harmonics."""
    theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0.0, 0.22 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    r = radius * np.clip(r, 0.45, None)
    xy = np.stack([center[0] + r * np.cos(theta), center[1] + r * np.sin(theta)], axis=1)
    return np.round(xy).astype(np.int32)


def _fill(shape: Size, polygon: np.ndarray) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [polygon], 1)
    return canvas


def _soft(binary: np.ndarray, sigma: float) -> np.ndarray:
    """A binary region with a blurred edge, as float32 alpha in [0, 1]."""
    return cv2.GaussianBlur(binary.astype(np.float32), (0, 0), sigma)


def _vessel_tree(rng: np.random.Generator, shape: Size, count: int, scale: float) -> np.ndarray:
    """Meandering, tapering vessels as a float32 alpha map."""
    h, w = shape
    canvas = np.zeros(shape, np.uint8)
    for _ in range(count):
        xy = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        angle = rng.uniform(0, 2 * math.pi)
        thickness = rng.uniform(1.0, 3.5) * scale
        step = 0.03 * min(h, w)
        points = [xy.copy()]
        for _ in range(int(rng.integers(12, 30))):
            angle += rng.normal(0, 0.35)
            xy = xy + step * np.array([math.cos(angle), math.sin(angle)])
            points.append(xy.copy())
        # Draw in short pieces so the vessel tapers along its length.
        for i in range(len(points) - 1):
            t = max(1, int(round(thickness * (1 - 0.7 * i / len(points)))))
            p0, p1 = (tuple(int(v) for v in p) for p in (points[i], points[i + 1]))
            cv2.line(canvas, p0, p1, 255, t, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def _micro_pattern(rng: np.random.Generator, shape: Size, cell: float) -> np.ndarray:
    """Dense dot/loop-like capillaries (intra-papillary loops): thresholded fine noise."""
    fine = _smooth_noise(rng, shape, cell)
    return np.clip((fine - 0.55) * 5.0, 0.0, 1.0)


def _blend(image: np.ndarray, color, alpha: np.ndarray) -> np.ndarray:
    """image * (1 - alpha) + color * alpha, alpha per pixel (HxW)."""
    a = alpha[..., None]
    return image * (1.0 - a) + np.asarray(color, np.float32) * a


def octagon_mask(size: Size, cut: float = BORDER_CUT) -> np.ndarray:
    """uint8 {0, 1} mask of the octagonal field of view of an endoscope frame."""
    h, w = size
    c = int(round(cut * min(h, w)))
    polygon = np.array([[c, 0], [w - 1 - c, 0], [w - 1, c], [w - 1, h - 1 - c],
                        [w - 1 - c, h - 1], [c, h - 1], [0, h - 1 - c], [0, c]], np.int32)
    return _fill((h, w), polygon)


def _lens_shading(size: Size) -> np.ndarray:
    """Vignetting times the octagon, as a 3-channel uint8 multiplier (255 = 1.0)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    gain = np.clip(1.05 - 0.35 * r2, 0.0, 1.0) * octagon_mask(size)
    return np.repeat((gain * 255).astype(np.uint8)[..., None], 3, axis=2)


def _palette(rng: np.random.Generator, colors: dict) -> dict:
    """Per-scene colour jitter, so no two scenes share exactly one palette."""
    return {k: np.clip(np.asarray(v, np.float32) * rng.normal(1.0, 0.06, 3), 0, 255) for k, v in colors.items()}


def _far_point(rng: np.random.Generator, shape: Size, avoid: tuple[float, float], distance: float):
    h, w = shape
    for _ in range(50):
        p = (rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h))
        if math.hypot(p[0] - avoid[0], p[1] - avoid[1]) > distance:
            return p
    return p


def render_canvas(rng: np.random.Generator, shape: Size, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene, registered: (wli BGR uint8, nbi BGR uint8, mask uint8 {0,1}) of `shape`.

    `scale` is min(frame H, W): feature sizes follow the frame, not the canvas.
    """
    h, w = shape
    px = scale / 300.0  # feature-size unit so scenes look alike at any resolution

    shade = 0.75 + 0.4 * _smooth_noise(rng, shape, 0.35 * scale)
    mottling = 0.08 * (_smooth_noise(rng, shape, 0.05 * scale) - 0.5)
    lumen_center = (rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h)

    lesion_center = (w / 2 + rng.uniform(-0.12, 0.12) * scale, h / 2 + rng.uniform(-0.12, 0.12) * scale)
    lesion_radius = rng.uniform(0.12, 0.26) * scale
    lesion = _fill(shape, _blob_polygon(rng, lesion_center, lesion_radius))
    lesion_soft = _soft(lesion, 1.5 * px)

    lumen_center = _far_point(rng, shape, lesion_center, lesion_radius + 0.3 * scale)
    lumen = _soft(_fill(shape, _blob_polygon(rng, lumen_center, rng.uniform(0.12, 0.2) * scale)), 18 * px)

    decoys = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        c = _far_point(rng, shape, lesion_center, lesion_radius + 0.15 * scale)
        decoys |= _fill(shape, _blob_polygon(rng, c, rng.uniform(0.08, 0.18) * scale))
    decoys &= 1 - lesion
    decoys_soft = _soft(decoys, 1.5 * px)

    vessels = _vessel_tree(rng, shape, count=int(14 * (h * w) / scale**2 / 2.25), scale=px)
    micro = _micro_pattern(rng, shape, cell=max(1.5, 3.2 * px)) * lesion_soft
    highlights = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(4, 10))):
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        axes = (max(1, int(rng.uniform(2, 7) * px)), max(1, int(rng.uniform(1, 4) * px)))
        cv2.ellipse(highlights, c, axes, rng.uniform(0, 180), 0, 360, 1, -1)
    highlights_soft = _soft(highlights, 1.0 * px)

    frames = []
    for colors, strength in ((WLI_COLORS, WLI_STRENGTH), (NBI_COLORS, NBI_STRENGTH)):
        pal = _palette(rng, colors)
        img = pal["tissue"] * (shade + mottling)[..., None]
        img = _blend(img, pal["vessel"], strength["vessel"] * vessels)
        img = _blend(img, pal["lesion_tint"], strength["lesion_tint"] * lesion_soft)
        img = _blend(img, pal["lesion_tint"], strength["decoy"] * decoys_soft)
        img = _blend(img, pal["micro"], strength["micro"] * micro)
        img = img * (1.0 - 0.8 * lumen)[..., None]
        img = _blend(img, (250, 250, 250), 0.9 * highlights_soft)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames[0], frames[1], lesion


def _camera(center: tuple[float, float], angle_deg: float, zoom: float, out_size: Size) -> np.ndarray:
    """3x3 affine mapping canvas pixels to frame pixels for a camera at `center`."""
    h, w = out_size
    a = math.radians(angle_deg)
    cos, sin = zoom * math.cos(a), zoom * math.sin(a)
    # p_out = zoom * R (p - center) + frame_center
    return np.array([[cos, -sin, w / 2 - cos * center[0] + sin * center[1]],
                     [sin, cos, h / 2 - sin * center[0] - cos * center[1]],
                     [0.0, 0.0, 1.0]])


def _misregistration(rng: np.random.Generator, size: Size, nbi_size: Size,
                     limits: tuple[float, float, float] = (0.025, 3.0, 0.03)) -> np.ndarray:
    """3x3 affine from WLI frame pixels to NBI frame pixels: small shift/rotation/zoom, then resize.

    `limits` = (shift as a fraction of the size, rotation in degrees, zoom deviation), each drawn uniformly in +-.
    """
    h, w = size
    max_shift, max_rotation, max_zoom = limits
    shift = rng.uniform(-max_shift, max_shift, 2) * np.array([w, h])
    jitter = _camera((w / 2 - shift[0], h / 2 - shift[1]), rng.uniform(-max_rotation, max_rotation),
                     rng.uniform(1 - max_zoom, 1 + max_zoom), size)
    resize = np.diag([nbi_size[1] / w, nbi_size[0] / h, 1.0])
    return resize @ jitter


class SyntheticScene:
    """A smoothly moving synthetic WLI/NBI scene; `frame(t)` renders time `t` seconds.

    The camera drifts, rotates and zooms on slow incommensurate sinusoids, so the
    sequence never visibly repeats; the NBI frame keeps the scene's fixed small
    mis-registration. `nbi_size` (default: `size`) lets the NBI frame differ in
    size from the WLI frame, as in real data. `nbi_warp` is the 3x3 affine from
    WLI frame pixels to NBI frame pixels (the mis-registration, then the resize).
    """

    def __init__(self, seed: int = 0, size: Size = (480, 540), nbi_size: Size | None = None,
                 misregistration: tuple[float, float, float] = (0.025, 3.0, 0.03)):
        h, w = int(size[0]), int(size[1])
        if h < 16 or w < 16:
            raise InvalidOptionError(f"SyntheticScene size must be at least 16x16, got {size}")
        self.seed = seed
        self.size = (h, w)
        self.nbi_size = tuple(int(v) for v in (nbi_size or size))
        rng = np.random.default_rng(seed)
        self._scale = float(min(h, w))
        canvas_shape = (int(h * CANVAS_MARGIN), int(w * CANVAS_MARGIN))
        self._wli, self._nbi, self._mask = render_canvas(rng, canvas_shape, self._scale)
        self._canvas_center = (canvas_shape[1] / 2, canvas_shape[0] / 2)
        self._phases = rng.uniform(0, 2 * math.pi, 4)
        self._periods = rng.uniform(6.0, 11.0, 4)
        self.nbi_warp = _misregistration(rng, self.size, self.nbi_size, misregistration)
        self._shading = {self.size: _lens_shading(self.size), self.nbi_size: _lens_shading(self.nbi_size)}
        self._fov = octagon_mask(self.size)

    def _wave(self, i: int, t: float) -> float:
        return math.sin(2 * math.pi * t / self._periods[i] + self._phases[i])

    def camera(self, t: float) -> np.ndarray:
        """3x3 affine canvas -> WLI frame at time t."""
        amp = 0.1 * self._scale
        center = (self._canvas_center[0] + amp * self._wave(0, t), self._canvas_center[1] + amp * self._wave(1, t))
        return _camera(center, 10.0 * self._wave(2, t), 1.0 + 0.1 * self._wave(3, t), self.size)

    def frame(self, t: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(wli_bgr HxWx3 uint8, nbi_bgr uint8, mask HxW uint8 {0,1}) at time `t` seconds."""
        h, w = self.size
        wli_cam = self.camera(t)
        nbi_cam = self.nbi_warp @ wli_cam
        nh, nw = self.nbi_size
        flags, border = cv2.INTER_LINEAR, cv2.BORDER_REFLECT
        wli = cv2.warpAffine(self._wli, wli_cam[:2], (w, h), flags=flags, borderMode=border)
        nbi = cv2.warpAffine(self._nbi, nbi_cam[:2], (nw, nh), flags=flags, borderMode=border)
        mask = cv2.warpAffine(self._mask, wli_cam[:2], (w, h), flags=cv2.INTER_NEAREST, borderMode=border)
        wli = cv2.multiply(wli, self._shading[self.size], scale=1 / 255)
        nbi = cv2.multiply(nbi, self._shading[self.nbi_size], scale=1 / 255)
        return wli, nbi, mask & self._fov


@dataclass(frozen=True)
class DomainShift:
    """How `endofuse synth --shift` test scenes differ from the training scenes.

    Colour calibration: each frame gets its own per-channel gain in [1 - color_gain, 1 + color_gain]
    and gamma in [1 / (1 + gamma), 1 + gamma]. Blur: Gaussian, sigma drawn in `blur_sigma` pixels
    per 320 px of frame width (scaled with the size), each frame on its own. Misregistration of NBI
    against WLI: shift up to `shift` of the size, rotation up to `rotation` degrees, zoom within
    1 +- `zoom` (training scenes: 0.025, 3 degrees, 0.03).
    """

    color_gain: float = 0.15
    gamma: float = 0.25
    blur_sigma: tuple[float, float] = (1.0, 2.5)
    shift: float = 0.06
    rotation: float = 8.0
    zoom: float = 0.08


def _calibrate_and_blur(rng: np.random.Generator, frame: np.ndarray, shift: DomainShift) -> np.ndarray:
    gain = rng.uniform(1 - shift.color_gain, 1 + shift.color_gain, 3)
    gamma = float(np.exp(rng.uniform(-np.log1p(shift.gamma), np.log1p(shift.gamma))))
    out = np.clip((frame.astype(np.float32) / 255.0) ** gamma * gain, 0.0, 1.0)
    sigma = rng.uniform(*shift.blur_sigma) * frame.shape[1] / 320.0
    out = cv2.GaussianBlur(out, (0, 0), sigma)
    return np.round(out * 255.0).astype(np.uint8)


def make_pair(seed: int, size: Size = (288, 320), nbi_size: Size | None = None, shift: DomainShift | None = None):
    """An independent still (wli_bgr, nbi_bgr, mask) pair: a fresh scene per seed, at a random pose.

    `shift` renders the scene under a `DomainShift` (the mask stays aligned to the WLI frame).
    """
    if shift is None:
        scene = SyntheticScene(seed, size, nbi_size)
    else:
        scene = SyntheticScene(seed, size, nbi_size, misregistration=(shift.shift, shift.rotation, shift.zoom))
    t = float(np.random.default_rng([seed, 1]).uniform(0, 60))
    wli, nbi, mask = scene.frame(t)
    if shift is not None:
        rng = np.random.default_rng([seed, 2])
        wli, nbi = _calibrate_and_blur(rng, wli, shift), _calibrate_and_blur(rng, nbi, shift)
    return wli, nbi, mask
