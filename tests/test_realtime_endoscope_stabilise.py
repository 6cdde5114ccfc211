"""The stabiliser and the overlay timing on one endoscope stream: HOLD frames do not feed it, an NBI look restarts
it (checked against a plain-numpy EMA + hysteresis + min-frames walk of the same probabilities), the overlay stays
inside the content area after stabilising and live-timing warps, and the per-frame log carries the overlay's age."""
from __future__ import annotations

import csv

import numpy as np
from test_realtime_endoscope import BOX, FPS, NO_HUD, scripted_stream

from endofuse.realtime.input.sources import MemorySource
from endofuse.realtime.output.frame_log import FrameLogSink
from endofuse.realtime.output.stabilise import StabiliseConfig
from endofuse.realtime.pairing.nbi_memory import FUSED_MEMORY, HOLD, NBI_VIEW
from endofuse.realtime.pipeline import build_pipeline
from endofuse.realtime.segment import WLI_ONLY

from conftest import ColourThresholdEngine

# WLI, one dark frame inside the WLI run, WLI, the NBI look, WLI back at the same place
SCRIPT = "WWWWWW" + "D" + "WWWW" + "DD" + "NNNNNNNN" + "DD" + "WWWWWWW"


class ScriptedProbabilityEngine(ColourThresholdEngine):
    """Tumour probability `probs[k]` on a centred square at the k-th call (0.02 elsewhere): the k-th frame that
    carries a mask gets a known map."""

    def __init__(self, input_size, probs) -> None:
        super().__init__(input_size)
        self.probs = probs

    def infer(self, wli, nbi):
        super().infer(wli, nbi)
        p = self.probs[(len(self.calls) - 1) % len(self.probs)]
        h, w = self.input_size
        logits = np.zeros((wli.shape[0], 2, h, w), np.float32)
        logits[:, 1] = np.log(0.02 / 0.98)
        logits[:, 1, h // 4:3 * h // 4, w // 4:3 * w // 4] = np.log(p / (1 - p))
        return logits


def reference_walk(modes, probs, cfg: StabiliseConfig):
    """Plain-numpy reference on the square's probability: per masked frame (smoothed, shown); HOLD skipped, NBI
    restarts the state."""
    out, smoothed, present, age, k = [], None, False, 0, 0
    for mode in modes:
        if mode == NBI_VIEW:
            smoothed, present, age = None, False, 0
        if mode in (NBI_VIEW, HOLD):
            continue
        p = probs[k % len(probs)]
        k += 1
        smoothed = p if smoothed is None else cfg.ema_weight * p + (1 - cfg.ema_weight) * smoothed
        present = smoothed > (cfg.off_threshold if present else cfg.on_threshold)
        age = min(age + 1, cfg.min_frames) if present else 0
        out.append((smoothed, present and age >= cfg.min_frames))
    return out


def run(frames, stabilise, engine, timing="sync", sinks=()):
    pipeline = build_pipeline(engine=engine, endoscope=MemorySource(frames, "scripted endoscope", FPS),
                              style=NO_HUD, warmup_frames=0, stabilise=stabilise, overlay_timing=timing, sinks=sinks)
    return list(pipeline), pipeline


def test_hold_frames_do_not_feed_the_stabiliser_and_an_nbi_look_restarts_it():
    cfg = StabiliseConfig("ema", on_threshold=0.6, off_threshold=0.4, min_frames=3, ema_weight=0.5)
    probs = [0.9, 0.7, 0.95, 0.55, 0.8, 0.65, 0.9, 0.45, 0.85]
    engine = ScriptedProbabilityEngine((32, 32), probs)
    results, pipeline = run(scripted_stream(SCRIPT), cfg, engine)
    modes = [r.mode for r in results]
    # the script gives a HOLD frame inside the first WLI run and an NBI look before the FUSED-MEMORY frames
    first_wli = modes.index(WLI_ONLY)
    assert HOLD in modes[first_wli:modes.index(NBI_VIEW)] and FUSED_MEMORY in modes[modes.index(NBI_VIEW):]
    expected = reference_walk(modes, probs, cfg)
    masked = [r for r in results if r.mode not in (NBI_VIEW, HOLD)]
    assert len(masked) == len(expected) == len(engine.calls)
    assert [bool(r.mask.any()) for r in masked] == [shown for _, shown in expected]
    assert [bool(r.mask.any()) for r in results if r.mode in (NBI_VIEW, HOLD)] == [False] * (len(results) - len(masked))
    # the last smoothed value (at the square's centre) equals the reference EMA restarted at the NBI look
    smoothed = pipeline.stabiliser.stabiliser.smoothed
    assert np.isclose(smoothed[16, 16], expected[-1][0], atol=1e-5)
    # temporal metrics over the masked frames only
    assert pipeline.report()["temporal"]["frames"] == len(masked)


def test_the_stabilised_live_timed_overlay_stays_inside_the_content_area(tmp_path):
    frames = scripted_stream(SCRIPT)
    engine = ScriptedProbabilityEngine((32, 32), [0.9])  # the square covers most of the crop's middle
    log = tmp_path / "frames.csv"
    results, pipeline = run(frames, StabiliseConfig("flow", min_frames=1), engine, timing="live",
                            sinks=[FrameLogSink(log)])
    x, y, w, h = BOX
    outside = np.ones(frames[0].shape[:2], bool)
    outside[y:y + h, x:x + w] = False
    modes = {r.index: r.mode for r in results}
    shown_any = False
    for r in results:
        area = r.extras["content_area"]
        inside = area.inside(frames[0].shape)
        assert not r.mask[~inside].any()
        assert not r.mask[outside].any()
        assert np.array_equal(r.overlay[~inside], r.frame[~inside])  # HUD off: nothing drawn outside the image
        if r.mode in (NBI_VIEW, HOLD):
            assert not r.mask.any() and np.array_equal(r.overlay, r.frame)
            assert "overlay_age_frames" not in r.extras
        else:
            shown_any |= bool(r.mask.any())
            # live timing only draws on a newer frame that itself carries a mask
            assert modes[r.extras["shown_index"]] not in (NBI_VIEW, HOLD)
    assert shown_any
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results)
    for row, r in zip(rows, results, strict=True):
        assert int(row["frame"]) == r.index and row["mode"] == r.mode
        if r.mode in (NBI_VIEW, HOLD):
            assert row["overlay_age_frames"] == row["overlay_age_ms"] == ""
        else:
            age = r.extras["overlay_age_frames"]
            assert int(row["overlay_age_frames"]) == age == int(row["shown_frame"]) - r.index
        assert int(row["mask_pixels"]) == np.count_nonzero(r.mask)


def test_evaluate_video_on_an_endoscope_recording_scores_the_masked_frames_in_the_content_area(
        synthetic_endoscope_recording, tmp_path):
    import shutil

    import cv2
    from test_realtime_endoscope import FusingEngine

    from endofuse.model.metrics import overlap_metrics
    from endofuse.realtime.commands.evaluate_video import evaluate_video

    video, _, frames = synthetic_endoscope_recording
    folder = tmp_path / "rec"
    folder.mkdir()
    for name in ("endoscope.mp4", "mask.mp4"):
        shutil.copy(video.parent / name, folder / name)
    metrics = evaluate_video(FusingEngine((32, 32)), folder, StabiliseConfig("off"))
    # reference: the same stream run directly, the mask video decoded here, Dice on the content area's crop
    results, _ = run(frames, StabiliseConfig("off"), FusingEngine((32, 32)))
    capture = cv2.VideoCapture(str(folder / "mask.mp4"))
    labels = [capture.read()[1].max(axis=2) > 127 for _ in frames]
    capture.release()
    masked = [r for r in results if r.mode not in (NBI_VIEW, HOLD)]
    assert 0 < len(masked) < len(results)  # the recording has NBI and HOLD frames, left out
    assert [row["frame"] for row in metrics["per_frame"]] == [r.index for r in masked]
    for row, r in zip(metrics["per_frame"], masked, strict=True):
        crop = r.extras["content_area"].crop
        assert row["dice"] == overlap_metrics(crop(r.mask), crop(labels[r.index]))["dice"]
    assert metrics["temporal"]["frames"] == len(masked)
    assert sum(metrics["modes"].values()) == len(results)
