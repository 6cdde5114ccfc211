"""The frame code: stamped at capture, read back from what the sinks write (compressed video, frames folder)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from endofuse.model.synthetic import SyntheticScene
from endofuse.realtime import frame_code
from endofuse.realtime.input.sources import MemorySource
from endofuse.realtime.output.sinks import ImageFolderSink, VideoFileSink


def scene_frames(count: int, size=(144, 176)) -> list[np.ndarray]:
    scene = SyntheticScene(seed=4, size=size)
    return [scene.frame(i / 30)[0] for i in range(count)]


def test_round_trip_and_a_damaged_code_reads_as_none():
    image = scene_frames(1)[0]
    for index in (0, 1, 255, 4097, 65535, 70000):
        assert frame_code.read(frame_code.stamp(image.copy(), index)) == index % 65536
    assert frame_code.read(image) is None  # an unstamped frame
    damaged = frame_code.stamp(image.copy(), 1234)
    top, left, cell = frame_code._region(damaged.shape)
    damaged[top + cell:top + 2 * cell, left + 5 * cell:left + 6 * cell] ^= 255  # one data cell flipped
    assert frame_code.read(damaged) is None


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_the_code_survives_the_video_writers_compression(tmp_path, suffix):
    frames = scene_frames(40)
    noise = np.random.default_rng(0)
    sink = VideoFileSink(tmp_path / f"out{suffix}", fps=30)
    for i, image in enumerate(frames):
        # the code as stamped at capture, then an overlay-like green tint over the corner and noise
        image = frame_code.stamp(image.copy(), 300 + i)
        image[-20:, -60:, 1] = np.maximum(image[-20:, -60:, 1], 120)
        image = np.clip(image + noise.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        sink.write(SimpleNamespace(overlay=image))
    sink.close()
    assert frame_code.read_video(tmp_path / f"out{suffix}") == list(range(300, 340))


def test_a_stamping_source_and_the_frames_folder(tmp_path):
    frames = scene_frames(5)
    source = MemorySource(frames, "coded", fps=30)
    source.stamp_code = True
    source.start(0.0, paced=False)
    sink = ImageFolderSink(tmp_path / "frames")
    for frame in source:
        sink.write(SimpleNamespace(index=frame.index, overlay=frame.image, mask=np.zeros(frame.image.shape[:2],
                                                                                         np.uint8)))
    sink.close()
    assert frame_code.read_folder(tmp_path / "frames") == [0, 1, 2, 3, 4]
    assert frame_code.read(frames[0]) is None  # the source stamped copies, not the frames it holds


def test_too_small_a_frame_is_refused():
    with pytest.raises(ValueError, match="too small"):
        frame_code.stamp(np.zeros((40, 40, 3), np.uint8), 1)
