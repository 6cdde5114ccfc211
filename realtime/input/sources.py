"""Frame sources: camera, video file, GStreamer/RTSP string, image folder, synthetic, memory.

Every source yields `Frame`s with a frame index, a monotonic capture time and
a `sync_time` on the timeline the synchroniser pairs on:

* live sources (cameras, network streams): `sync_time` = capture time;
* recorded sources (files, folders, synthetic): `sync_time` = epoch + the
  frame's place in the recording (a video file's own timestamps where it has
  usable ones, else index / fps: see `frame_times`), whether played paced (at
  its own pace, like a camera) or as fast as possible (lossless).

A paced frame is read, then held until its time comes; its capture time is
stamped after the wait, so waits never count as latency. `open_source(spec)` turns the CLI
strings into sources; `open_source_pair` also shares one synthetic scene
between WLI and NBI and splits an interleaved single stream in two.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from endofuse.errors import EndofuseError
from endofuse.realtime import frame_code
from endofuse.realtime.input.frame_times import (
    CAPTURE_CLOCK,
    CONTAINER,
    FALLBACK_FPS,
    NOMINAL_FPS,
    mp4_frame_times,
    strictly_increasing,
)
from endofuse.realtime.tracing import now

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_FPS = 30.0


@dataclass
class Frame:
    """One captured frame; `image` is BGR uint8 HxWx3."""

    index: int
    capture_time: float
    sync_time: float
    image: np.ndarray
    read_ms: float = 0.0
    source: str = ""
    extras: dict = field(default_factory=dict)


class SourceLost(EndofuseError):
    """A live source disappeared and did not come back within its retry budget."""


class Source:
    """Base class: subclasses implement `_open`, `_read` (image or None at the end) and `_close`."""

    live = False  # frames arrive on the device's own clock (camera, network stream)
    stamp_code = False  # stamp each frame's index as a frame code (realtime.frame_code) when it is read

    def __init__(self, name: str, fps: float = DEFAULT_FPS) -> None:
        self.name = name
        fps = float(fps)
        if not (math.isfinite(fps) and fps > 0):
            raise EndofuseError(f"{name}: frame rate must be a finite number > 0, got {fps}")
        self.fps = fps
        self._index = 0
        self._epoch = 0.0
        self._paced = False
        self._stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------
    def open(self) -> Source:
        """Open and check the source now, so a bad path fails before any thread starts."""
        self._open()
        return self

    def start(self, epoch: float, paced: bool) -> None:
        """Set the shared timeline origin; `paced` plays recordings at their own fps."""
        self._epoch, self._paced, self._index = epoch, paced and not self.live, 0

    def stop(self) -> None:
        """Ask a blocked `next_frame` (pacing or camera retry) to give up soon."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._close()

    @property
    def timing(self) -> str:
        """How frames are placed in time (`frame_times.TIMINGS`): the report's `timing` per stream."""
        return CAPTURE_CLOCK if self.live else NOMINAL_FPS

    # -- reading -----------------------------------------------------------
    def next_frame(self) -> Frame | None:
        """The next frame, or None at the end of the stream (or when stopped)."""
        index = self._index
        if self._stop.is_set():
            return None
        started = now()
        image = self._read()
        read_s = now() - started
        if image is None:
            return None
        self._index += 1
        offset = self._frame_time(index)  # after the read: a file's timestamp is known once its frame is
        if self._paced:
            delay = self._epoch + offset - now()
            if delay > 0 and self._stop.wait(delay):
                return None
        captured = now()
        if self.stamp_code:  # on a copy: a memory or shared synthetic frame may be served again
            image = frame_code.stamp(image.copy(), index)
        sync_time = captured if self.live else self._epoch + offset
        return Frame(index, captured, sync_time, image, read_s * 1000.0, self.name)

    def _frame_time(self, index: int) -> float:
        """Seconds from the first frame to frame `index` (read last) in the recording."""
        return index / self.fps

    def __iter__(self):
        while (frame := self.next_frame()) is not None:
            yield frame

    # -- to implement ------------------------------------------------------
    def _open(self) -> None:
        pass

    def _read(self) -> np.ndarray | None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


def ensure_bgr(image: np.ndarray, where: str) -> np.ndarray:
    """Grey / BGRA / 16-bit images as BGR uint8, or an error naming `where`."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise EndofuseError(f"{where}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise EndofuseError(f"{where}: unsupported image shape {image.shape}")


class VideoFileSource(Source):
    """A recorded video file; a file that stops decoding before its announced length is an error."""

    def __init__(self, path: str | os.PathLike, role: str = "video") -> None:
        self.path = Path(path)
        self.role = role
        super().__init__(f"{role} video {self.path}")
        self._capture: cv2.VideoCapture | None = None
        self._first: np.ndarray | None = None
        self.frame_count = 0
        self._decoded = 0
        self._timing = NOMINAL_FPS
        self._times: list[float] | None = None  # the MP4/MOV sample table's, known before decoding
        self._decoder_times = False
        self._first_stamp = self._last_stamp = self._last_offset = 0.0  # other containers: decoder timestamps (s)

    def _open(self) -> None:
        if not self.path.exists():
            raise EndofuseError(f"{self.role} video '{self.path}': no such file")
        if not self.path.is_file():
            raise EndofuseError(f"{self.role} video '{self.path}': not a regular file")
        kind = image_kind(self.path)
        if kind is not None:  # OpenCV would play a still image as a one-frame "video"
            raise EndofuseError(f"{self.role} video '{self.path}': this is a {kind} image, not a video; give a "
                                "folder of images (played at --fps) or a video file")
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise EndofuseError(
                f"{self.role} video '{self.path}': cannot be opened (unsupported format, corrupt or truncated file)"
            )
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise EndofuseError(f"{self.role} video '{self.path}': no frame could be decoded "
                                f"(corrupt or truncated file)")
        self._capture, self._first = capture, first
        self._first_stamp = self._last_stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        self.fps = _valid_fps(capture.get(cv2.CAP_PROP_FPS))
        self._timing = NOMINAL_FPS if self.fps == capture.get(cv2.CAP_PROP_FPS) else FALLBACK_FPS
        self.frame_count = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        self.frame_size = (first.shape[1], first.shape[0])
        times = mp4_frame_times(self.path)
        self._decoder_times = times is None  # not MP4/MOV: the decoder's timestamps, if they increase
        if times is not None and len(times) > 1:
            if strictly_increasing(times):
                self._times, self._timing = times, CONTAINER
                average = (len(times) - 1) / times[-1]  # a variable rate's average, for writers and sync
                if not math.isclose(self.fps, average, rel_tol=0.01):
                    self.fps = _valid_fps(average)
            else:  # durations of 0: the decoder's rate and timestamps are invented from them
                self.fps, self._timing = DEFAULT_FPS, FALLBACK_FPS

    @property
    def timing(self) -> str:
        return self._timing

    def _frame_time(self, index: int) -> float:  # called once per frame, right after its read
        if self._times is not None:
            if index < len(self._times):
                return self._times[index]
            return self._times[-1] + (index - len(self._times) + 1) / self.fps  # more frames than samples
        if index == 1 and self._decoder_times and self._last_stamp > self._first_stamp:
            self._timing = CONTAINER  # the second frame shows whether the decoder times frames
        if self._timing != CONTAINER:
            return index / self.fps
        offset = self._last_stamp - self._first_stamp
        if index > 0 and offset <= self._last_offset:  # a timestamp that goes back: one period after the last
            offset = self._last_offset + 1.0 / self.fps
        self._last_offset = offset
        return offset

    def _read(self) -> np.ndarray | None:
        if self._capture is None:
            self._open()
        if self._first is not None:
            image, self._first = self._first, None
        else:
            ok, image = self._capture.read()
            if not ok or image is None:
                if self.frame_count and self._decoded < self.frame_count:
                    raise EndofuseError(
                        f"{self.role} video '{self.path}': truncated or corrupt: decoding stopped after frame "
                        f"{self._decoded} of {self.frame_count}"
                    )
                return None
            if self._times is None:
                self._last_stamp = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        self._decoded += 1
        return ensure_bgr(image, f"{self.role} video '{self.path}' frame {self._decoded - 1}")

    def _close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"),
                    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"GIF8", "GIF"))


def image_kind(path: Path) -> str | None:
    """"PNG", "JPEG", ... when the file's first bytes are an image signature (whatever its name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in IMAGE_SIGNATURES if head.startswith(magic)), None)


def _valid_fps(fps: float) -> float:
    # containers often store 0, nan or 90000 (a timebase) when the rate is unknown
    return float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS


class ImageFolderSource(Source):
    """Images of a folder in name order, at `fps`; an unreadable image is an error naming it."""

    def __init__(self, folder: str | os.PathLike, role: str = "image", fps: float = DEFAULT_FPS) -> None:
        self.folder = Path(folder)
        self.role = role
        super().__init__(f"{role} folder {self.folder}", fps)
        self.files: list[Path] = []
        self._next = 0

    def _open(self) -> None:
        if not self.folder.is_dir():
            raise EndofuseError(f"{self.role} folder '{self.folder}': no such folder")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise EndofuseError(f"{self.role} folder '{self.folder}': no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._next = 0

    def _read(self) -> np.ndarray | None:
        if self._next >= len(self.files):
            return None
        path = self.files[self._next]
        self._next += 1
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise EndofuseError(f"{self.role} image '{path}': cannot be decoded (corrupt, truncated or unsupported)")
        return ensure_bgr(image, f"{self.role} image '{path}'")


class CameraSource(Source):
    """A capture device (index or /dev path) or network/GStreamer stream; reconnects with back-off.

    When reads fail, the device is released and reopened after 0.1, 0.2, 0.4 ...
    seconds (capped at `max_backoff_s`) until `give_up_s` has passed, then
    `SourceLost` is raised. `capture_factory` is injectable for tests.
    """

    live = True

    def __init__(self, device: int | str, role: str = "camera", give_up_s: float = 30.0,
                 first_backoff_s: float = 0.1, max_backoff_s: float = 2.0, capture_factory=None,
                 api_preference: int = cv2.CAP_ANY) -> None:
        super().__init__(f"{role} camera {device}")
        self.device, self.role = device, role
        self.give_up_s, self.first_backoff_s, self.max_backoff_s = give_up_s, first_backoff_s, max_backoff_s
        self._factory = capture_factory or (lambda: cv2.VideoCapture(device, api_preference))
        self._capture = None
        self.reconnects = 0

    def _open(self) -> None:
        if isinstance(self.device, str) and self.device.startswith("/dev/") and not Path(self.device).exists():
            raise EndofuseError(f"{self.role} camera '{self.device}': no such device")
        capture = self._factory()
        if not capture.isOpened():
            raise EndofuseError(f"{self.role} camera '{self.device}': cannot be opened")
        self._capture = capture
        self.fps = _valid_fps(capture.get(cv2.CAP_PROP_FPS))

    def _read(self) -> np.ndarray | None:
        ok, image = self._capture.read() if self._capture is not None else (False, None)
        if ok and image is not None:
            return ensure_bgr(image, self.name)
        return self._reconnect()

    def _reconnect(self) -> np.ndarray | None:
        """Release, then reopen with exponential back-off until a frame comes or time runs out."""
        lost_at, backoff = now(), self.first_backoff_s
        while not self._stop.is_set():
            if self._capture is not None:
                self._capture.release()
                self._capture = None
            if now() - lost_at > self.give_up_s:
                raise SourceLost(f"{self.role} camera '{self.device}': lost and not back after {self.give_up_s:g} s")
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.max_backoff_s)
            capture = self._factory()
            if capture.isOpened():
                ok, image = capture.read()
                if ok and image is not None:
                    self._capture = capture
                    self.reconnects += 1
                    return ensure_bgr(image, self.name)
                capture.release()
        return None

    def _close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class MemorySource(Source):
    """Frames held in memory, replayed `loops` times (None: forever); used by `bench` and tests."""

    def __init__(self, images: list[np.ndarray], name: str = "memory", fps: float = DEFAULT_FPS,
                 loops: int | None = 1) -> None:
        if not images:
            raise ValueError(f"{name}: no frames")
        super().__init__(name, fps)
        self.images, self.loops = images, loops
        self._served = 0

    def start(self, epoch: float, paced: bool) -> None:
        super().start(epoch, paced)
        self._served = 0

    def _read(self) -> np.ndarray | None:
        if self.loops is not None and self._served >= self.loops * len(self.images):
            return None
        image = self.images[self._served % len(self.images)]
        self._served += 1
        return image
