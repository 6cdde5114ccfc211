"""The pipeline end to end on real files written here, with the deterministic stand-in engine."""
import threading
import time

import cv2
import numpy as np
import pytest

from endofuse.errors import EndofuseError
from endofuse.model.synthetic import SyntheticScene
from endofuse.realtime import FUSED, WLI_ONLY, Pipeline, PipelineConfig, build_pipeline
from endofuse.realtime.input.sources import CameraSource, ImageFolderSource, MemorySource, VideoFileSource
from endofuse.realtime.output.overlay import OverlayStyle
from endofuse.realtime.output.sinks import CallbackSink, ImageFolderSink, VideoFileSink

from conftest import ColourThresholdEngine, ScriptedCapture, write_video

SIZE = (120, 136)  # odd-ish frame size on purpose


@pytest.fixture(scope="module")
def video_pair(tmp_path_factory):
    """A synthetic WLI/NBI pair of videos: 30 WLI frames, 18 NBI frames (NBI ends early)."""
    folder = tmp_path_factory.mktemp("pair")
    scene = SyntheticScene(2, SIZE)
    frames = [scene.frame(i / 30) for i in range(30)]
    write_video(folder / "wli.mp4", [f[0] for f in frames])
    write_video(folder / "nbi.mp4", [f[1] for f in frames[:18]])
    return folder / "wli.mp4", folder / "nbi.mp4"


def decode_all(path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while (frame := capture.read()[1]) is not None:
        frames.append(frame)
    return frames


def test_lossless_run_on_files_covers_every_frame_and_the_overlay_differs_exactly_on_the_mask(video_pair, tmp_path):
    wli_path, nbi_path = video_pair
    engine = ColourThresholdEngine((40, 48), threshold=0.7)
    out = tmp_path / "out.mp4"
    wli = VideoFileSource(wli_path, "WLI").open()
    sinks = [VideoFileSink(out, wli.fps)]
    style = OverlayStyle(alpha=0.45, hud=False)  # no HUD: every change must be the mask's
    pipeline = Pipeline(wli, VideoFileSource(nbi_path, "NBI").open(), engine,
                        PipelineConfig(style=style, warmup_frames=2), sinks)
    inputs = decode_all(wli_path)
    results = list(pipeline)
    assert [r.index for r in results] == list(range(30))
    masked = 0
    for result, expected_input in zip(results, inputs, strict=True):
        np.testing.assert_array_equal(result.frame, expected_input)
        changed = (result.overlay != result.frame).any(axis=2)
        np.testing.assert_array_equal(changed, result.mask.astype(bool), err_msg=f"frame {result.index}")
        masked += int(result.mask.sum() > 0)
    assert masked >= 25, "the test needs frames with a visible mask"
    # NBI has 18 frames: frames 0-17 paired, then a few stale, then WLI-only.
    assert [r.mode for r in results[:18]] == [FUSED] * 18
    assert [r.mode for r in results[21:]] == [WLI_ONLY] * 9
    assert engine.calls == [r.mode == FUSED for r in results]
    report = pipeline.report()
    assert report["frames"] == 30 and report["dropped"] == 0
    assert report["paired"] + report["stale_pairs"] + report["nbi_missing"] == 30
    assert (report["paired"], report["stale_pairs"], report["nbi_missing"]) == (18, 3, 9)
    assert report["counted_frames"] == 28 and report["latency_ms"]["p50"] > 0
    written = decode_all(out)
    assert len(written) == 30 and written[0].shape == inputs[0].shape


def test_contour_stays_inside_the_mask_and_the_hud_inside_its_box(video_pair):
    wli_path, nbi_path = video_pair
    pipeline = build_pipeline(str(wli_path), str(nbi_path), ColourThresholdEngine((40, 48), 0.7), frames=5,
                              hud=True, contour=True, warmup_frames=0)
    for result in pipeline:
        changed = (result.overlay != result.frame).any(axis=2)
        changed[:40, :] = False  # the HUD box lies in the top rows (checked precisely in test_realtime_segment)
        assert not (changed & (result.mask == 0)).any()


def test_resolution_change_mid_stream(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    scene_small, scene_big = SyntheticScene(1, (90, 100)), SyntheticScene(1, (150, 170))
    for i in range(8):
        frame = (scene_small if i < 4 else scene_big).frame(i / 30)[0]
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    out = tmp_path / "out.avi"
    images = tmp_path / "images"
    wli = ImageFolderSource(folder, "WLI").open()
    pipeline = Pipeline(wli, None, ColourThresholdEngine((32, 32), 0.6), PipelineConfig(warmup_frames=0),
                        [VideoFileSink(out, 30), ImageFolderSink(images)])
    results = list(pipeline)
    assert [r.mask.shape for r in results] == [(90, 100)] * 4 + [(150, 170)] * 4
    assert all(r.mode == WLI_ONLY for r in results)
    assert pipeline.report()["resolution_changes"] == 1
    written = decode_all(out)
    assert len(written) == 8 and {f.shape for f in written} == {(90, 100, 3)}
    assert len(list(images.glob("overlay_*.png"))) == 8 and len(list(images.glob("mask_*.png"))) == 8
    np.testing.assert_array_equal(cv2.imread(str(images / "mask_000005.png"), cv2.IMREAD_GRAYSCALE) // 255,
                                  results[5].mask)


def test_live_slow_engine_drops_frames_but_latency_stays_bounded():
    frames = [np.full((60, 80, 3), i, np.uint8) for i in range(10)]
    engine = ColourThresholdEngine((16, 16), delay_s=0.06)  # 60 ms inference against a 100 fps source
    wli = MemorySource(frames, "WLI", fps=100, loops=None)
    pipeline = Pipeline(wli, None, engine, PipelineConfig(live=True, frames=80, warmup_frames=3))
    results = list(pipeline)
    report = pipeline.report()
    assert report["dropped"] > 0
    assert len(results) + report["dropped"] == 80  # every frame either shown or counted as dropped
    # Latest-frame-wins: a frame never waits behind older ones, so latency stays near one inference.
    assert report["latency_ms"]["p50"] < 3 * 60


def test_nbi_camera_disappearing_switches_to_wli_only_and_back():
    attempts = []

    def nbi_factory():
        attempts.append(time.monotonic())
        # 15 frames, then the device is gone for two open attempts, then back for good
        if len(attempts) == 1:
            return ScriptedCapture(15, period_s=1 / 60, size=(40, 50))
        return ScriptedCapture(10_000, opens=len(attempts) >= 4, period_s=1 / 60, size=(40, 50))

    nbi = CameraSource(1, "NBI", give_up_s=5, first_backoff_s=0.1, capture_factory=nbi_factory).open()
    wli = MemorySource([np.full((48, 64, 3), 100, np.uint8)], "WLI", fps=60, loops=None)
    pipeline = Pipeline(wli, nbi, ColourThresholdEngine((16, 16)), PipelineConfig(live=True, frames=90,
                                                                                  warmup_frames=0))
    modes = [r.mode for r in pipeline]
    fused_from = modes.index(FUSED)  # the very first WLI frame may come before the NBI camera's first
    outage = modes.index(WLI_ONLY, fused_from)
    assert modes[-1] == FUSED and FUSED in modes[outage:]  # fusion resumed after the camera came back
    report = pipeline.report()
    assert report["camera_reconnects"] == 1 and report["nbi_missing"] > 0


def test_a_lost_nbi_camera_that_never_returns_leaves_a_warning_not_an_error():
    nbi = CameraSource(2, "NBI", give_up_s=0.2, first_backoff_s=0.02,
                       capture_factory=iter([ScriptedCapture(3, size=(40, 50))] +
                                            [ScriptedCapture(0, opens=False)] * 100).__next__).open()
    wli = MemorySource([np.zeros((48, 64, 3), np.uint8)], "WLI", fps=50, loops=None)
    pipeline = Pipeline(wli, nbi, ColourThresholdEngine((16, 16)), PipelineConfig(live=True, frames=40))
    modes = [r.mode for r in pipeline]
    assert modes[-1] == WLI_ONLY
    assert any("NBI camera '2': lost" in w for w in pipeline.report()["warnings"])


def test_an_error_in_a_capture_thread_reaches_the_caller_and_closes_the_output(tmp_path, video_pair):
    full = tmp_path / "full.avi"
    write_video(full, [np.full((40, 50, 3), 8 * i, np.uint8) for i in range(30)], fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = tmp_path / "out.mp4"
    wli = VideoFileSource(video_pair[0], "WLI").open()
    pipeline = Pipeline(wli, VideoFileSource(cut, "NBI").open(), ColourThresholdEngine((16, 16)),
                        PipelineConfig(), [VideoFileSink(out, 30)])
    with pytest.raises(EndofuseError, match=r"NBI video '.*cut.avi': truncated"):
        list(pipeline)
    partial = tmp_path / "out.partial.mp4"  # what was written before the fault: playable, named as partial
    assert not out.exists() and partial.exists() and len(decode_all(partial)) > 0
    assert not any(t.name.startswith("endofuse-") and t.is_alive() for t in threading.enumerate())


def test_breaking_out_early_and_closing_stops_every_thread():
    pipeline = build_pipeline("synthetic", "synthetic", ColourThresholdEngine((16, 16)), live=True)
    for result in pipeline:
        if result.index >= 3:
            break
    pipeline.close()
    assert not any(t.name.startswith("endofuse-") and t.is_alive() for t in threading.enumerate())


def test_callback_sink_sees_every_result():
    seen = []
    frames = [np.full((30, 40, 3), i * 20, np.uint8) for i in range(6)]
    pipeline = Pipeline(MemorySource(frames, "WLI"), MemorySource(frames, "NBI"), ColourThresholdEngine((8, 8)),
                        PipelineConfig(), [CallbackSink(lambda r: seen.append((r.index, r.mode, r.status)))])
    pipeline.run()
    assert seen == [(i, FUSED, "paired") for i in range(6)]


def test_the_gil_switch_interval_is_shortened_while_running_and_restored_after():
    import sys

    before = sys.getswitchinterval()
    frames = [np.full((30, 40, 3), i * 20, np.uint8) for i in range(4)]
    seen = []
    config = PipelineConfig(gil_switch_interval_s=0.0007)
    pipeline = Pipeline(MemorySource(frames, "WLI"), MemorySource(frames, "NBI"), ColourThresholdEngine((8, 8)),
                        config, [CallbackSink(lambda r: seen.append(sys.getswitchinterval()))])
    pipeline.run()
    assert len(seen) == 4 and all(abs(s - 0.0007) < 1e-9 for s in seen)
    assert sys.getswitchinterval() == before
    untouched = Pipeline(MemorySource(frames, "WLI"), None, ColourThresholdEngine((8, 8)),
                         PipelineConfig(gil_switch_interval_s=None),
                         [CallbackSink(lambda r: seen.append(sys.getswitchinterval()))])
    untouched.run()
    assert seen[4:] == [before] * 4
