"""A machine-readable frame code in the bottom-right corner: software glass-to-glass on the pixels.

    stamp(image, index)          # in place, at capture (a source with `stamp_code = True`)
    read(image) -> index | None  # from the frame that reaches the output (video, window, frames folder)
    read_video(path) / read_folder(path) -> [index or None per output frame]

Two rows of 13 square cells (black/white), cell side max(4, min(H, W) // 40) px:
a white and a black guard cell (the reader's threshold is their midpoint, so
a tinted or blended corner still reads), 16 bits of the frame index (mod
65536) and 8 bits of a CRC-8 over them; a code that fails the check reads as
None. Cells are flat and sampled at their centre half, so the mp4v/MJPG
encoders' block artefacts do not flip them (tests/test_realtime_frame_code.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

CELLS_PER_ROW = 13
ROWS = 2
INDEX_BITS = 16
CHECK_BITS = 8


def cell_size(shape: tuple[int, ...]) -> int:
    return max(4, min(shape[:2]) // 40)


def _region(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(top, left, cell) of the code's box; it needs a frame at least 13 cells wide and 2 high."""
    cell = cell_size(shape)
    h, w = shape[:2]
    if w < CELLS_PER_ROW * cell or h < ROWS * cell:
        raise ValueError(f"a {w}x{h} frame is too small for a frame code ({CELLS_PER_ROW * cell}x{ROWS * cell} px)")
    return h - ROWS * cell, w - CELLS_PER_ROW * cell, cell


def _crc8(value: int) -> int:
    crc = 0
    for byte in (value >> 8 & 0xFF, value & 0xFF):
        crc ^= byte
        for _ in range(8):
            crc = (crc << 1 ^ 0x07) & 0xFF if crc & 0x80 else crc << 1 & 0xFF
    return crc


def _bits(index: int) -> list[int]:
    value = index % (1 << INDEX_BITS)
    word = value << CHECK_BITS | _crc8(value)
    return [1, 0] + [word >> (INDEX_BITS + CHECK_BITS - 1 - i) & 1 for i in range(INDEX_BITS + CHECK_BITS)]


def stamp(image: np.ndarray, index: int) -> np.ndarray:
    """Draw the code of `index` into `image` (BGR or grey uint8) in place; returns the image."""
    top, left, cell = _region(image.shape)
    for k, bit in enumerate(_bits(index)):
        y, x = top + (k // CELLS_PER_ROW) * cell, left + (k % CELLS_PER_ROW) * cell
        image[y:y + cell, x:x + cell] = 255 if bit else 0
    return image


def read(image: np.ndarray) -> int | None:
    """The frame index coded in `image` (mod 65536), or None when there is no valid code."""
    top, left, cell = _region(image.shape)
    box = image[top:, left:left + CELLS_PER_ROW * cell]
    grey = cv2.cvtColor(box, cv2.COLOR_BGR2GRAY) if box.ndim == 3 else box
    q = cell // 4
    levels = [float(grey[r * cell + q:(r + 1) * cell - q, c * cell + q:(c + 1) * cell - q].mean())
              for r in range(ROWS) for c in range(CELLS_PER_ROW)]
    white, black = levels[0], levels[1]
    if white - black < 40:  # no contrast between the guards: not a coded frame
        return None
    threshold = (white + black) / 2
    word = 0
    for level in levels[2:]:
        word = word << 1 | int(level > threshold)
    value, check = word >> CHECK_BITS, word & ((1 << CHECK_BITS) - 1)
    return value if _crc8(value) == check else None


def read_video(path: str | os.PathLike) -> list[int | None]:
    """The code of every frame of a video file, in order."""
    capture = cv2.VideoCapture(str(path))
    codes = []
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return codes
            codes.append(read(image))
    finally:
        capture.release()


def read_folder(folder: str | os.PathLike, pattern: str = "overlay_*.png") -> list[int | None]:
    """The code of every `overlay_NNNNNN.png` an `ImageFolderSink` wrote, in name order."""
    return [read(cv2.imread(str(p))) for p in sorted(Path(folder).glob(pattern))]
