"""The stabiliser and the overlay timing inside the pipeline: what is drawn, on which frame, and how old it is."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from endofuse import cli
from endofuse.errors import InvalidOptionError
from endofuse.realtime import frame_code
from endofuse.realtime.input.sources import MemorySource
from endofuse.realtime.output.overlay import OverlayStyle
from endofuse.realtime.output.stabilise import StabiliseConfig
from endofuse.realtime.pipeline import build_pipeline

from conftest import ColourThresholdEngine, ConfidentEngine


def squares(count: int, steady_from: int, blips: tuple[int, ...], size=(96, 128)) -> list[np.ndarray]:
    """Black frames; a red square on the left from `steady_from` on, one on the right in the `blips` frames."""
    frames = []
    for t in range(count):
        image = np.zeros((*size, 3), np.uint8)
        if t >= steady_from:
            image[16:48, 16:48, 2] = 255
        if t in blips:
            image[16:48, 80:112, 2] = 255
        frames.append(image)
    return frames


def run_results(frames, stabilise, **kwargs):
    engine = ConfidentEngine(input_size=(48, 64))
    pipeline = build_pipeline(MemorySource(frames, "wli", fps=30), None, engine, stabilise=stabilise,
                              warmup_frames=0, **kwargs)
    results = [(r.index, r.mask.copy(), r.extras) for r in pipeline]
    return results, pipeline.report()


def test_the_default_stabiliser_hides_a_two_frame_blip_and_shows_a_steady_region_on_frame_n():
    frames = squares(12, steady_from=0, blips=(6, 7))
    raw, _ = run_results(frames, StabiliseConfig("off"))
    stable, report = run_results(frames, StabiliseConfig(min_frames=3))
    left, right = (slice(20, 44), slice(20, 44)), (slice(20, 44), slice(84, 108))
    assert [bool(m[right].any()) for _, m, _ in raw] == [t in (6, 7) for t in range(12)]
    assert not any(m[right].any() for _, m, _ in stable)
    # present from the first frame (p = 0.98 > 0.6): shown on the third, index 2
    assert [bool(m[left].all()) for _, m, _ in stable] == [t >= 2 for t in range(12)]
    temporal = report["temporal"]
    assert temporal["settings"] == {"stabilise": "flow", "on_threshold": 0.6, "off_threshold": 0.4,
                                    "min_frames": 3, "ema_weight": 0.5}
    assert (temporal["frames"], temporal["shown_runs"], temporal["toggles"]) == (12, 1, 1)


def stamped_live_run(timing: str):
    frames = squares(40, steady_from=0, blips=())
    source = MemorySource(frames, "coded wli", fps=30)
    source.stamp_code = True
    engine = ColourThresholdEngine(input_size=(48, 64), threshold=0.0, delay_s=0.05)  # ~1.5 frame periods
    pipeline = build_pipeline(source, None, engine, live=True, warmup_frames=0, overlay_timing=timing,
                              style=OverlayStyle(alpha=0.0, hud=False), stabilise=StabiliseConfig("off"))
    seen = [(r.index, r.extras, frame_code.read(r.overlay)) for r in pipeline]
    return seen, pipeline.report()["overlay"]


def test_sync_timing_draws_on_the_masks_own_frame_age_zero():
    seen, overlay = stamped_live_run("sync")
    assert len(seen) > 5
    for index, extras, code in seen:
        assert code == index  # read from the output pixels
        assert (extras["overlay_age_frames"], extras["overlay_age_ms"]) == (0, 0.0)
    assert overlay["age_frames"]["p99"] == 0 and overlay["age_ms"]["p99"] == 0
    assert overlay["frame_code"]["read"] == len(seen) and overlay["frame_code"]["age_frames"]["p99"] == 0


def test_live_timing_age_equals_the_lag_measured_on_the_pixels():
    seen, overlay = stamped_live_run("live")
    ages = []
    for index, extras, code in seen:
        # the frame under the overlay (its code, read from the output pixels) is the mask's frame plus the age
        assert code == extras["shown_index"] == index + extras["overlay_age_frames"]
        # paced at 30 fps: capture times are one period apart (wall-clock pacing on a busy machine jitters)
        assert extras["overlay_age_ms"] == pytest.approx(extras["overlay_age_frames"] * 1000 / 30, abs=25)
        ages.append(extras["overlay_age_frames"])
    assert np.median(ages) >= 1  # a 50-ms engine at 30 fps: the overlay is at least a frame old
    assert overlay["timing"] == "live"
    assert overlay["age_frames"]["p50"] == overlay["frame_code"]["age_frames"]["p50"] == np.median(ages)
    assert overlay["frame_code"]["mismatched"] == overlay["frame_code"]["unreadable"] == 0


def test_an_unknown_timing_is_one_clear_error():
    with pytest.raises(InvalidOptionError, match="--overlay-timing"):
        build_pipeline(MemorySource(squares(2, 0, ()), "wli"), None, ColourThresholdEngine(), overlay_timing="late")


def test_run_cli_live_timing_frame_code_and_frame_log_agree_with_the_pixels(tmp_path):
    frames_dir, log, report = tmp_path / "frames", tmp_path / "log.csv", tmp_path / "report.json"
    assert cli.main(["run", "--wli", "synthetic", "--nbi", "synthetic", "--frames", "15", "--live", "--frame-code",
                     "--overlay-timing", "live", "--frames-dir", str(frames_dir), "--log", str(log),
                     "--report", str(report)]) == 0
    rows = list(csv.DictReader(log.open()))
    codes = frame_code.read_folder(frames_dir)  # the overlay files, in frame order
    assert len(rows) == len(codes) > 0
    for row, code in zip(rows, codes, strict=True):
        assert code == int(row["shown_frame"]) == int(row["frame"]) + int(row["overlay_age_frames"])
    overlay = json.loads(report.read_text())["overlay"]
    assert overlay["timing"] == "live" and overlay["frame_code"]["read"] == len(rows)
    assert overlay["frame_code"]["unreadable"] == overlay["frame_code"]["mismatched"] == 0


def test_the_hud_shows_the_overlay_age():
    from endofuse.realtime.output.overlay import HudInfo
    from endofuse.realtime.output.timing import OverlayTiming

    line = OverlayTiming.hud_line((2, 66.4), "live")
    assert line == "overlay age 2 fr 66 ms"
    assert HudInfo("FUSED", "engine", overlay_age=line).lines()[-1] == line
    assert OverlayTiming.hud_line((0, 0.0), "sync") == "overlay sync"


def test_the_hud_box_hides_bright_on_screen_text_under_it():
    # a processor output's white on-screen text under the HUD must not read through the HUD's own lines
    from endofuse.realtime.output.overlay import HudInfo, draw_hud

    frame = np.full((360, 640, 3), 255, np.uint8)
    x0, y0, x1, y1 = draw_hud(frame, HudInfo("FUSED-MEMORY", "engine", mode_note="NBI 0.4 s ago",
                                             overlay_age="overlay age 2 fr 75 ms"))
    box = frame[y0:y1, x0:x1]
    assert np.median(box) <= 255 // 8  # the background under the text: white darkened to 1/8
    assert box.max() >= 200  # the HUD text itself stays bright


def test_live_flow_retargets_the_mask_onto_the_newer_frame():
    from types import SimpleNamespace

    from endofuse.model.synthetic import SyntheticScene
    from endofuse.realtime.output.timing import OverlayTiming

    older = SyntheticScene(seed=2, size=(96, 112)).frame(0.0)[0]
    newer = np.roll(older, (2, 4), axis=(0, 1))  # the scene moved 4 px right, 2 px down (numpy: the reference)
    logits = np.zeros((2, 48, 56), np.float32)
    logits[1, 16:32, 20:36] = 5.0  # a lesion on the older frame, at the map's scale (1/2)
    frame, shown = SimpleNamespace(image=older, index=0), SimpleNamespace(image=newer, index=1)
    moved = OverlayTiming.retarget(logits, frame, shown).argmax(0) == 1
    want = np.zeros((48, 56), bool)
    want[17:33, 22:38] = True  # 2 map pixels right, 1 down
    assert (moved & want).sum() / (moved | want).sum() > 0.85
    assert OverlayTiming.retarget(logits, frame, frame) is logits
