"""Where overlaid frames go: a video file, an image folder, an OpenCV window, a callback.

A sink has `write(result)` and `close()`; the pipeline calls them from its
output stage and always closes every sink (also on errors and Ctrl-C), so a
video file is finalised and playable whatever stopped the run.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from endofuse.errors import EndofuseError
from endofuse.outputs import (
    OutputFolder,
    WriteError,
    check_output_file,
    fsync_file,
    write_image,
)

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
        check_output_file(self.path, "output video")  # a bad folder fails before the run, not after it
        self.fps = fps
        self.fourcc = FOURCC_BY_SUFFIX[suffix]
        self._partial = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self._writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None  # (W, H)
        self.frames = 0
        self.resized_frames = 0
        self.partial_reason: str | None = None  # set when the run failed mid-stream
        self.written_path: Path | None = None  # where the video ended up (final or .partial name)

    def write(self, result) -> None:
        image = result.overlay
        if self._writer is None:
            self.size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self._partial), cv2.VideoWriter_fourcc(*self.fourcc), self.fps,
                                           self.size)
            if not self._writer.isOpened():
                self._writer = None
                raise EndofuseError(f"output video '{self.path}': OpenCV cannot write {self.fourcc} video here")
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)  # resolution changed mid-stream
            self.resized_frames += 1
        self._writer.write(image)
        self.frames += 1

    def mark_partial(self, reason: str) -> None:
        """The run stopped on an error: keep what was written under a name that says it is partial."""
        self.partial_reason = reason

    @property
    def partial_path(self) -> Path:
        return self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")

    def close(self) -> None:
        """Finalise, check every frame is in the file, then rename; a failed write keeps the old file."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        try:
            fsync_file(self._partial)
            written = _count_frames(self._partial)
            if written != self.frames:
                raise WriteError(f"output video '{self.path}': only {written} of {self.frames} frames could be "
                                 f"written ({_disk_reason(self.path.parent)})")
        except BaseException:
            self._partial.unlink(missing_ok=True)
            raise
        self.written_path = self.partial_path if self.partial_reason else self.path
        os.replace(self._partial, self.written_path)


def _count_frames(path: Path) -> int:
    """Frames a reader finds in a finished video (0 when the container cannot be opened)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if capture.isOpened() else 0
    finally:
        capture.release()


def _disk_reason(folder: Path) -> str:
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return "no space left on device"
    except OSError:
        pass
    return "the video encoder failed to write"


class ImageFolderSink:
    """Writes `overlay_NNNNNN.png` (and `mask_NNNNNN.png`, 0/255) per frame into a folder."""

    def __init__(self, folder: str | os.PathLike, masks: bool = True, force: bool = False) -> None:
        self.folder = Path(folder)
        self.output = OutputFolder(self.folder, "--frames-dir", force=force).prepare()
        self.masks = masks
        self.frames = 0

    def write(self, result) -> None:
        name = f"{result.index:06d}.png"
        # cv2.imwrite returns False on a full disk without saying why; write_image names the reason
        write_image(self.folder / f"overlay_{name}", result.overlay, durable=False)
        if self.masks:
            write_image(self.folder / f"mask_{name}", result.mask * np.uint8(255), durable=False)
        self.frames += 1

    def close(self) -> None:
        self.output.commit()


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
