"""Sources on real files written here (cv2.VideoWriter / cv2.imwrite), cameras through a scripted capture."""
import time

import cv2
import numpy as np
import pytest

from endofuse.errors import EndofuseError
from endofuse.model.synthetic import SyntheticScene
from endofuse.realtime.input.source_specs import open_source, open_source_pair
from endofuse.realtime.input.sources import CameraSource, ImageFolderSource, SourceLost, VideoFileSource
from endofuse.realtime.tracing import now

from conftest import ScriptedCapture, write_video


def numbered_frames(count: int, size=(48, 64)) -> list[np.ndarray]:
    """Frames whose index can be read back after lossy coding: the mean grey level is 8 * index."""
    return [np.full((*size, 3), 8 * i, np.uint8) for i in range(count)]


def index_of(frame: np.ndarray) -> int:
    return int(round(frame.mean() / 8))


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "numbered.mp4"
    write_video(path, numbered_frames(24), fps=24.0)
    return path


def test_video_file_gives_every_frame_in_order_on_the_file_timeline(video_path):
    source = VideoFileSource(video_path, "WLI").open()
    assert source.fps == pytest.approx(24.0) and source.frame_count == 24
    source.start(epoch=100.0, paced=False)
    frames = list(source)
    assert [index_of(f.image) for f in frames] == list(range(24))
    assert [f.index for f in frames] == list(range(24))
    assert [f.sync_time for f in frames] == pytest.approx([100.0 + i / 24.0 for i in range(24)])
    assert all(f.image.shape == (48, 64, 3) for f in frames)


def test_paced_playback_follows_the_file_fps_and_stamps_after_the_wait(video_path):
    source = VideoFileSource(video_path, "WLI").open()
    epoch = now()
    source.start(epoch, paced=True)
    frames = [source.next_frame() for _ in range(8)]
    for frame in frames:
        scheduled = epoch + frame.index / 24.0
        assert frame.capture_time >= scheduled  # the pacing wait happened before the stamp
    assert frames[-1].capture_time - epoch >= 7 / 24.0


def test_missing_file_is_named(tmp_path):
    with pytest.raises(EndofuseError, match=r"WLI video '.*nothere.mp4': no such file"):
        open_source(str(tmp_path / "nothere.mp4"), "WLI")


def test_unsupported_file_is_named(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n")
    with pytest.raises(EndofuseError, match=r"NBI video '.*notes.mp4': cannot be opened \(unsupported"):
        open_source(str(path), "NBI")


def test_truncated_mp4_is_named(tmp_path, video_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video_path.read_bytes()[: video_path.stat().st_size // 2])
    with pytest.raises(EndofuseError, match=r"cut.mp4': cannot be opened .*truncated"):
        open_source(str(cut), "WLI")


def test_truncated_avi_fails_at_the_frame_where_decoding_stops(tmp_path):
    full = tmp_path / "full.avi"
    write_video(full, numbered_frames(30), fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.5)])
    source = open_source(str(cut), "NBI")
    source.start(0.0, paced=False)
    expected = r"NBI video '.*cut.avi': truncated or corrupt: decoding stopped after frame \d+ of 30"
    with pytest.raises(EndofuseError, match=expected):
        list(source)


def test_image_folder_in_name_order_with_grey_and_alpha_images(tmp_path):
    cv2.imwrite(str(tmp_path / "b.png"), np.full((10, 12), 50, np.uint8))  # grey
    cv2.imwrite(str(tmp_path / "a.png"), np.full((10, 12, 4), 20, np.uint8))  # BGRA
    cv2.imwrite(str(tmp_path / "c.jpg"), np.full((14, 9, 3), 90, np.uint8))  # another size
    (tmp_path / "notes.txt").write_text("ignored")
    source = ImageFolderSource(tmp_path, "WLI", fps=10).open()
    source.start(0.0, paced=False)
    frames = list(source)
    assert [f.image.shape for f in frames] == [(10, 12, 3), (10, 12, 3), (14, 9, 3)]
    assert [int(f.image.mean()) for f in frames[:2]] == [20, 50]
    assert [f.sync_time for f in frames] == pytest.approx([0.0, 0.1, 0.2])


def test_corrupt_image_in_a_folder_is_named(tmp_path):
    cv2.imwrite(str(tmp_path / "0.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    source = ImageFolderSource(tmp_path, "NBI").open()
    source.start(0.0, paced=False)
    with pytest.raises(EndofuseError, match=r"NBI image '.*1.png': cannot be decoded"):
        list(source)


def test_empty_folder_is_named(tmp_path):
    with pytest.raises(EndofuseError, match="no images"):
        open_source(str(tmp_path), "WLI")


def test_camera_reconnects_with_growing_back_off():
    opened_at = []

    def factory():
        opened_at.append(now())
        # 1st open: 5 frames then gone; 2nd and 3rd: device absent; 4th: back with 5 more frames
        return ScriptedCapture(5, opens=len(opened_at) in (1, 4), start=0 if len(opened_at) == 1 else 5)

    camera = CameraSource(0, "NBI", give_up_s=5, first_backoff_s=0.02, max_backoff_s=1.0,
                          capture_factory=factory).open()
    camera.start(now(), paced=False)
    frames = [camera.next_frame() for _ in range(10)]
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(10))
    assert camera.reconnects == 1 and len(opened_at) == 4
    gaps = np.diff(opened_at[1:])  # back-off doubles: 0.04 then 0.08 s after the first 0.02 s
    assert gaps[1] > gaps[0] * 1.5
    assert [f.index for f in frames] == list(range(10)) and all(f.sync_time == f.capture_time for f in frames)


def test_camera_gives_up_after_its_budget():
    calls = []
    factory = lambda: calls.append(1) or ScriptedCapture(2 if len(calls) == 1 else 0, opens=len(calls) == 1)  # noqa: E731
    camera = CameraSource(3, "WLI", give_up_s=0.2, first_backoff_s=0.01, max_backoff_s=0.05,
                          capture_factory=factory).open()
    camera.start(now(), paced=False)
    camera.next_frame(), camera.next_frame()
    started = now()
    with pytest.raises(SourceLost, match=r"WLI camera '3': lost and not back after 0.2 s"):
        camera.next_frame()
    assert 0.2 <= now() - started < 2.0


def test_camera_that_never_opens_is_named():
    with pytest.raises(EndofuseError, match="WLI camera '7': cannot be opened"):
        CameraSource(7, "WLI", capture_factory=lambda: ScriptedCapture(0, opens=False)).open()
    with pytest.raises(EndofuseError, match="no such device"):
        open_source("/dev/video-does-not-exist-99", "NBI")


def test_synthetic_pair_matches_the_scene_rendered_independently():
    wli, nbi = open_source_pair("synthetic:5", "synthetic:5", fps=20, frames=4)
    wli.start(0.0, paced=False)
    nbi.start(0.0, paced=False)
    reference = SyntheticScene(5, (480, 540))
    for i in range(4):
        w, n = wli.next_frame(), nbi.next_frame()
        ref_w, ref_n, _ = reference.frame(i / 20)
        np.testing.assert_array_equal(w.image, ref_w)
        np.testing.assert_array_equal(n.image, ref_n)
        assert w.sync_time == n.sync_time == pytest.approx(i / 20)
    assert wli.next_frame() is None  # --frames applies to WLI


def test_interleaved_stream_is_split_even_wli_odd_nbi(tmp_path):
    path = tmp_path / "interleaved.mp4"
    write_video(path, numbered_frames(20), fps=30.0)
    wli, nbi = open_source_pair(f"interleaved:{path}", f"interleaved:{path}")
    assert wli.fps == nbi.fps == pytest.approx(15.0)
    wli.start(0.0, paced=False)
    nbi.start(0.0, paced=False)
    w_frames = [wli.next_frame() for _ in range(10)]
    n_frames = [nbi.next_frame() for _ in range(10)]
    assert [index_of(f.image) for f in w_frames] == list(range(0, 20, 2))
    assert [index_of(f.image) for f in n_frames] == list(range(1, 20, 2))
    assert [f.index for f in n_frames] == list(range(10))
    assert n_frames[3].sync_time - w_frames[3].sync_time == pytest.approx(1 / 30)
    assert wli.next_frame() is None and nbi.next_frame() is None


@pytest.mark.parametrize("wli, nbi, message", [
    ("interleaved:0", "1", "same interleaved:SRC"),
    ("synthetic:x", None, "synthetic:SEED"),
    ("v4l2src ! videoconvert ! appsink", None, "GStreamer"),
    ("", None, "empty"),
])
def test_bad_source_strings_are_explained(wli, nbi, message):
    with pytest.raises(EndofuseError, match=message):
        open_source_pair(wli, nbi)


def test_stop_interrupts_pacing():
    source = VideoFileSource.__new__(VideoFileSource)  # not opened: pacing happens before any read
    VideoFileSource.__init__(source, "unused.mp4")
    source.fps = 0.5
    source.start(now() + 10, paced=True)
    source.stop()
    started = time.monotonic()
    assert source.next_frame() is None and time.monotonic() - started < 0.5
