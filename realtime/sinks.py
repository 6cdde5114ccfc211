"""Where overlaid frames go: a video file, an image folder, an OpenCV window, a callback.

A sink has `write(result)` and `close()`; the pipeline calls them from its
output stage and always closes every sink (also on errors and Ctrl-C), so a
video file is finalised and playable whatever stopped the run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from endofuse.errors import EndofuseError

FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


class VideoFileSink:
    """Writes overlays to a video at `fps`; the size is the first frame's, later sizes are resized to it.

    The file is written to a temporary name and renamed on `close`, so a
    reader never sees a half-written file under the final name.
    """

    def __init__(self, path: str | os.PathLike, fps: float) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC_BY_SUFFIX:
            raise EndofuseError(f"output video '{self.path}': unsupported extension "
                                f"(use one of {', '.join(sorted(FOURCC_BY_SUFFIX))})")
        if not self.path.parent.exists():
            raise EndofuseError(f"output video '{self.path}': folder '{self.path.parent}' does not exist")
        self.fps = fps
        self.fourcc = FOURCC_BY_SUFFIX[suffix]
        self._partial = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self._writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None  # (W, H)
        self.frames = 0
        self.resized_frames = 0

    def write(self, result) -> None:
        image = result.overlay
        if self._writer is None:
            self.size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self._partial), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self.size)
            if not self._writer.isOpened():
                self._writer = None
                raise EndofuseError(f"output video '{self.path}': OpenCV cannot write {self.fourcc} video here")
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)  # resolution changed mid-stream
            self.resized_frames += 1
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self._partial, self.path)


class ImageFolderSink:
    """Writes `overlay_NNNNNN.png` (and `mask_NNNNNN.png`, 0/255) per frame into a folder."""

    def __init__(self, folder: str | os.PathLike, masks: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.masks = masks
        self.frames = 0

    def write(self, result) -> None:
        name = f"{result.index:06d}.png"
        if not cv2.imwrite(str(self.folder / f"overlay_{name}"), result.overlay):
            raise EndofuseError(f"image folder '{self.folder}': cannot write overlay_{name}")
        if self.masks:
            cv2.imwrite(str(self.folder / f"mask_{name}"), result.mask * np.uint8(255))
        self.frames += 1

    def close(self) -> None:
        pass


class WindowSink:
    """An OpenCV window (`--display`); `q` or Esc asks the pipeline to stop."""

    def __init__(self, title: str = "endofuse", request_stop: Callable[[], None] | None = None) -> None:
        self.title, self.request_stop = title, request_stop
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise EndofuseError("--display needs OpenCV with GUI support; this one has none (opencv-python-headless); "
                                "pip install opencv-python, or write --out / --frames-dir instead") from None

    def write(self, result) -> None:
        cv2.imshow(self.title, result.overlay)
        if (cv2.waitKey(1) & 0xFF) in (ord("q"), 27) and self.request_stop is not None:
            self.request_stop()

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


class CallbackSink:
    """Calls `callback(result)` for every frame (embedding in other software)."""

    def __init__(self, callback: Callable) -> None:
        self.callback = callback

    def write(self, result) -> None:
        self.callback(result)

    def close(self) -> None:
        pass
