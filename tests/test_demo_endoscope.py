"""The demo's "Endoscope recording" tab: one processor recording through the pipeline, same outputs as the
video pair tab (preview, overlaid video, report.json, CDF, a status with the modes)."""
from __future__ import annotations

import json

import cv2
import pytest

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402

from endofuse.demo.engines import BUNDLED_MODEL, EngineCache, model_choices  # noqa: E402
from endofuse.demo.video import process_endoscope_video  # noqa: E402

from conftest import ColourThresholdEngine  # noqa: E402


def engines() -> EngineCache:
    return EngineCache(model_choices(None), opener=lambda checkpoint, backend="auto": ColourThresholdEngine((32, 32)))


def test_one_recording_gives_the_overlaid_video_and_a_report_with_the_modes(synthetic_endoscope_recording, tmp_path):
    video, truth, _ = synthetic_endoscope_recording
    steps = list(process_endoscope_video(engines(), str(video), 0.45, BUNDLED_MODEL, "torch", 40, tmp_path))
    preview, overlay_video, report_path, _, status = steps[-1]
    report = json.loads(open(report_path).read())
    capture = cv2.VideoCapture(overlay_video)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 40 == report["frames"]
    capture.release()
    # 40 of the 60 frames: WLI, then the NBI look (from frame 15), then back in WLI at the same place
    assert report["modes"]["NBI"] > 0 and report["modes"]["FUSED-MEMORY"] > 0 and report["endoscope"]["switches"] == 2
    assert "FUSED-MEMORY" in status and "2 WLI/NBI switches" in status


def test_no_recording_is_a_message(tmp_path):
    with pytest.raises(gr.Error, match="Upload a recording"):
        list(process_endoscope_video(engines(), None, 0.45, BUNDLED_MODEL, "torch", 40, tmp_path))


def test_the_recording_is_stabilised_with_the_run_defaults_and_shows_the_overlay_age(
        synthetic_endoscope_recording, tmp_path):
    from endofuse.realtime import build_pipeline
    from endofuse.realtime.output.stabilise import StabiliseConfig

    video, _, _ = synthetic_endoscope_recording
    steps = list(process_endoscope_video(engines(), str(video), 0.45, BUNDLED_MODEL, "torch", 40, tmp_path))
    _, overlay_video, report_path, _, status = steps[-1]
    report = json.loads(open(report_path).read())
    defaults = StabiliseConfig()
    assert report["temporal"]["settings"] == {"stabilise": defaults.mode, "on_threshold": defaults.on_threshold,
                                              "off_threshold": defaults.off_threshold,
                                              "min_frames": defaults.min_frames, "ema_weight": defaults.ema_weight}
    assert report["overlay"]["timing"] == "sync" and report["overlay"]["age_frames"]["p50"] == 0
    assert f"stabilise {defaults.mode} (min {defaults.min_frames} frames); overlay sync, age p50 0 frames" in status
    # the reference: `endofuse run`'s pipeline with its default stabiliser, on the same recording
    reference = build_pipeline(engine=ColourThresholdEngine((32, 32)), endoscope=str(video), frames=40,
                               stabilise=defaults)
    masks = [int(result.mask.sum()) for result in reference]
    off = build_pipeline(engine=ColourThresholdEngine((32, 32)), endoscope=str(video), frames=40,
                         stabilise=StabiliseConfig("off"))
    assert masks != [int(result.mask.sum()) for result in off]  # the stabiliser changes what is shown here
    assert report["temporal"] == json.loads(json.dumps(reference.report()["temporal"]))


def test_the_video_pair_tab_uses_the_same_stabiliser(tmp_path):
    import numpy as np

    from endofuse.demo.video import process_video_pair
    from endofuse.realtime.output.stabilise import StabiliseConfig

    from conftest import write_video

    rng = np.random.default_rng(0)
    for name in ("wli", "nbi"):
        images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(8)]
        write_video(tmp_path / f"{name}.avi", images, fourcc="MJPG")
    steps = list(process_video_pair(engines(), str(tmp_path / "wli.avi"), str(tmp_path / "nbi.avi"), 0.45,
                                    BUNDLED_MODEL, "torch", 8, tmp_path))
    report = json.loads(open(steps[-1][2]).read())
    assert report["temporal"]["settings"]["stabilise"] == StabiliseConfig().mode == "flow"
    assert report["overlay"]["timing"] == "sync" and "overlay sync, age p50 0 frames" in steps[-1][4]
