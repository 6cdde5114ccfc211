"""From the CLI's source strings to `Source` objects; the synthetic and interleaved sources.

Accepted strings (for `--wli` / `--nbi`):

* `synthetic` or `synthetic:SEED` - the procedural scene of `endofuse.model.synthetic`
  (WLI and NBI sides render the same scene once per time step);
* `0`, `1`, ... or `/dev/videoN` - a capture device (live);
* `rtsp://...`, `http(s)://...` or a GStreamer pipeline (contains `!`) - a live stream;
* a video file, or a folder of images (played at `--fps`);
* `interleaved:SRC` for BOTH `--wli` and `--nbi` - one device/file whose frames
  alternate WLI, NBI, WLI, ... (even frames WLI, odd frames NBI).

`--endoscope SRC` (one processor output switched by hand between WLI and NBI)
takes the same forms except `interleaved:`; there `synthetic[:SEED]` is a
synthetic processor output (`endofuse.model.synthetic_endoscope`).
"""
from __future__ import annotations

import re
import threading
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from endofuse.errors import EndofuseError
from endofuse.realtime.input.sources import (
    DEFAULT_FPS,
    CameraSource,
    Frame,
    ImageFolderSource,
    Source,
    VideoFileSource,
)

SYNTHETIC_SIZE = (480, 540)  # (H, W): about a capture card's SD frame, renders in a few ms
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "rtmp://")
INTERLEAVED_PREFIX = "interleaved:"


class SharedSyntheticScene:
    """One `SyntheticScene` rendered once per time step for both the WLI and the NBI side."""

    def __init__(self, seed: int = 0, size: tuple[int, int] = SYNTHETIC_SIZE) -> None:
        from endofuse.model.synthetic import SyntheticScene  # imported on use: only synthetic runs need it

        self.scene = SyntheticScene(seed, size)
        self._lock = threading.Lock()
        self._cache: dict[int, list] = {}  # step -> [wli, nbi, sides still to take it]

    def take(self, step: int, fps: float, side: int) -> np.ndarray:
        """Image of `side` (0 WLI, 1 NBI) at `step`; the pair is rendered by whichever side asks first."""
        with self._lock:
            entry = self._cache.get(step)
            if entry is None:
                wli, nbi, _ = self.scene.frame(step / fps)
                entry = self._cache[step] = [wli, nbi, {0, 1}]
                for old in [s for s in self._cache if s < step - 8]:  # a side that lags far behind re-renders
                    del self._cache[old]
            entry[2].discard(side)
            if not entry[2]:
                del self._cache[step]
            return entry[side]


class SyntheticSource(Source):
    """One side (WLI or NBI) of a shared synthetic scene; endless unless `frames` is given."""

    def __init__(self, shared: SharedSyntheticScene, side: int, fps: float = DEFAULT_FPS, frames: int | None = None):
        super().__init__(f"synthetic {'NBI' if side else 'WLI'} (seed {shared.scene.seed})", fps)
        self.shared, self.side, self.frames = shared, side, frames

    def _read(self) -> np.ndarray | None:
        if self.frames is not None and self._index >= self.frames:
            return None
        return self.shared.take(self._index, self.fps, self.side)


class SyntheticEndoscopeSource(Source):
    """A synthetic processor output (`model.synthetic_endoscope`): WLI -> NBI -> WLI, then the scope moves.

    With `frames` the clip's timeline spans exactly that many frames; without, a 20-s clip loops.
    """

    LOOP_S = 20.0

    def __init__(self, seed: int = 0, fps: float = DEFAULT_FPS, frames: int | None = None) -> None:
        from endofuse.model.synthetic_endoscope import MIN_FRAMES, SyntheticEndoscope  # only synthetic runs need it

        super().__init__(f"synthetic endoscope (seed {seed})", fps)
        self.frames = frames
        self.clip = SyntheticEndoscope(max(MIN_FRAMES, frames or int(self.LOOP_S * self.fps)), fps=self.fps,
                                       seed=seed)

    def _read(self) -> np.ndarray | None:
        if self.frames is not None and self._index >= self.frames:
            return None
        return self.clip.render(self._index % self.clip.frames)[0]


class InterleavedSplit:
    """Splits one source whose frames alternate WLI/NBI into two sources that share it.

    Whichever side asks for a frame reads the underlying source (under a lock)
    and routes each frame to its side's buffer; capture times are stamped at
    the underlying read. From a live device a side keeps only its newest
    `live_buffer` frames (a device must not be back-pressured); from a file
    nothing is dropped.
    """

    def __init__(self, source: Source, live_buffer: int = 4) -> None:
        self.source = source
        self._lock = threading.Lock()
        maxlen = live_buffer if source.live else None
        self._buffers = (deque(maxlen=maxlen), deque(maxlen=maxlen))
        self._ended = False
        self._underlying_index = 0
        self.sides = (_InterleavedSide(self, 0), _InterleavedSide(self, 1))

    def open(self) -> None:
        self.source.open()
        for side in self.sides:
            side.fps = self.source.fps / 2
            side.live = self.source.live

    def start(self, epoch: float, paced: bool) -> None:
        self.source.start(epoch, paced)
        self._underlying_index = 0

    def next_for(self, side: int) -> Frame | None:
        with self._lock:
            while not self._buffers[side]:
                if self._ended:
                    return None
                frame = self.source.next_frame()
                if frame is None:
                    self._ended = True
                    return None
                route = frame.index % 2
                frame.index //= 2
                frame.source = f"{self.source.name} ({'NBI' if route else 'WLI'} frames)"
                self._buffers[route].append(frame)
            return self._buffers[side].popleft()


class _InterleavedSide(Source):
    def __init__(self, split: InterleavedSplit, side: int) -> None:
        super().__init__(f"interleaved {'NBI' if side else 'WLI'} of {split.source.name}", split.source.fps / 2)
        self.split, self.side = split, side
        self._opened = False

    def open(self) -> Source:
        if not self.split.sides[1 - self.side]._opened:
            self.split.open()
        self._opened = True
        return self

    def start(self, epoch: float, paced: bool) -> None:
        if self.side == 0:  # the WLI side owns the shared timeline
            self.split.start(epoch, paced)

    @property
    def timing(self) -> str:
        return self.split.source.timing

    def next_frame(self) -> Frame | None:
        return self.split.next_for(self.side)

    def stop(self) -> None:
        self.split.source.stop()

    def close(self) -> None:
        self.split.source.close()


def is_camera(spec: str) -> bool:
    return bool(re.fullmatch(r"\d+", spec)) or spec.startswith("/dev/video")


def open_source(spec: str, role: str, fps: float = DEFAULT_FPS, frames: int | None = None,
                shared_scene: SharedSyntheticScene | None = None, camera_give_up_s: float = 30.0) -> Source:
    """One source from its CLI string (see the module docstring); opened, so bad paths fail here."""
    spec = str(spec).strip()
    if not spec:
        raise EndofuseError(f"{role} source is empty")
    if spec == "synthetic" or spec.startswith("synthetic:"):
        seed = _synthetic_seed(spec, role)
        shared = shared_scene or SharedSyntheticScene(seed)
        return SyntheticSource(shared, 0 if role == "WLI" else 1, fps, frames).open()
    if is_camera(spec):
        device = int(spec) if spec.isdigit() else spec
        return CameraSource(device, role, give_up_s=camera_give_up_s).open()
    if spec.startswith(STREAM_PREFIXES) or "!" in spec:
        api = cv2.CAP_GSTREAMER if "!" in spec else cv2.CAP_FFMPEG
        if api == cv2.CAP_GSTREAMER and "GStreamer:                   YES" not in cv2.getBuildInformation():
            raise EndofuseError(f"{role} source '{spec}': this OpenCV build has no GStreamer support "
                                "(install an OpenCV built with GStreamer, or use an rtsp:// URL)")
        return CameraSource(spec, role, give_up_s=camera_give_up_s, api_preference=api).open()
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, role, fps).open()
    return VideoFileSource(path, role).open()


def open_endoscope_source(spec: str, fps: float = DEFAULT_FPS, frames: int | None = None,
                          camera_give_up_s: float = 30.0) -> Source:
    """The one source of `run --endoscope SRC` (see the module docstring)."""
    spec = str(spec).strip()
    if spec.startswith(INTERLEAVED_PREFIX):
        raise EndofuseError(f"--endoscope '{spec}': an endoscope stream switches modes by hand, not frame by frame; "
                            "use --wli interleaved:SRC --nbi interleaved:SRC for an interleaved device")
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return SyntheticEndoscopeSource(_synthetic_seed(spec, "endoscope"), fps, frames).open()
    return open_source(spec, "endoscope", fps, frames, camera_give_up_s=camera_give_up_s)


def _synthetic_seed(spec: str, role: str) -> int:
    if spec == "synthetic":
        return 0
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise EndofuseError(f"{role} source '{spec}': expected synthetic or synthetic:SEED (an integer)") from None


def open_source_pair(wli_spec: str, nbi_spec: str | None, fps: float = DEFAULT_FPS, frames: int | None = None,
                     camera_give_up_s: float = 30.0) -> tuple[Source, Source | None]:
    """The WLI and (optional) NBI sources; shares a synthetic scene and splits interleaved streams."""
    wli_spec, nbi_spec = str(wli_spec), None if nbi_spec is None else str(nbi_spec)
    if wli_spec.startswith(INTERLEAVED_PREFIX) or (nbi_spec or "").startswith(INTERLEAVED_PREFIX):
        if wli_spec != nbi_spec:
            raise EndofuseError("an interleaved stream needs the same interleaved:SRC for --wli and --nbi, got "
                                f"'{wli_spec}' and '{nbi_spec}'")
        inner = open_source(wli_spec[len(INTERLEAVED_PREFIX):], "interleaved", fps * 2,
                            None if frames is None else frames * 2, camera_give_up_s=camera_give_up_s)
        split = InterleavedSplit(inner)
        for side in split.sides:
            side.open()
        return split.sides
    shared = None
    if nbi_spec is not None and wli_spec.startswith("synthetic") and wli_spec == nbi_spec:
        shared = SharedSyntheticScene(_synthetic_seed(wli_spec, "WLI"))
    wli = open_source(wli_spec, "WLI", fps, frames, shared, camera_give_up_s)
    try:
        nbi = None if nbi_spec is None else open_source(nbi_spec, "NBI", fps, None, shared, camera_give_up_s)
    except Exception:
        wli.close()
        raise
    return wli, nbi
