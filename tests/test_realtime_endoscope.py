"""One endoscope stream through the pipeline: modes per frame, masks from the remembered NBI view, the overlay
kept inside the content area, HOLD frames, the per-frame log and the report; bad streams keep flowing."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from endofuse.model.synthetic import SyntheticScene
from endofuse.realtime.input.sources import MemorySource
from endofuse.realtime.output.frame_log import LOG_COLUMNS, FrameLogSink
from endofuse.realtime.output.overlay import OverlayStyle
from endofuse.realtime.pairing.endoscope import EndoscopeConfig
from endofuse.realtime.pairing.nbi_memory import FUSED_MEMORY, HOLD, NBI_VIEW
from endofuse.realtime.pipeline import build_pipeline
from endofuse.realtime.segment import FUSED, WLI_ONLY, segment_pair

from conftest import ColourThresholdEngine

FPS = 30.0
IMAGE = (120, 140)  # (H, W) of the endoscopic image inside the processor frame
FRAME = (180, 260)
BOX = (100, 30, 140, 120)  # where the image is placed: x, y, w, h
NO_HUD = OverlayStyle(hud=False)


class FusingEngine(ColourThresholdEngine):
    """The colour-threshold stand-in, with the NBI input's green shifting the tumour logit: fused and WLI-only
    masks differ, so a mask shows which NBI frame (if any) it was made with."""

    def infer(self, wli, nbi):
        logits = super().infer(wli, nbi)
        if nbi is not None:
            logits[:, 1] += 1.5 * (nbi[:, 1] - 0.35)
        return logits


def processor_frame(image: np.ndarray, box=BOX, size=FRAME) -> np.ndarray:
    """A processor-style output frame: the image in a black frame beside on-screen text."""
    out = np.zeros((*size, 3), np.uint8)
    x, y, w, h = box
    out[y:y + h, x:x + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    cv2.putText(out, "ID 0421  NBI 2", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return out


def scripted_stream(script: str, seed: int = 0, other_seed: int = 7) -> list[np.ndarray]:
    """W = WLI, N = NBI, D = dark transition frame, M = WLI of another place (the scope moved away)."""
    here, there = SyntheticScene(seed, IMAGE), SyntheticScene(other_seed, IMAGE)
    frames = []
    for i, kind in enumerate(script):
        wli, nbi, _ = (there if kind == "M" else here).frame(i / FPS)
        frames.append(processor_frame({"W": wli, "M": wli, "N": nbi, "D": wli // 10}[kind]))
    return frames


# 6 WLI, 2 dark, 8 NBI, 2 dark, 6 WLI back at the same place, 4 WLI elsewhere
SCRIPT = "WWWWWW" + "DD" + "NNNNNNNN" + "DD" + "WWWWWW" + "MMMM"
# By hand, with the modality tracker's 3-frame hysteresis (a new mode is taken on its 3rd frame):
EXPECTED = ([HOLD] * 2 + [WLI_ONLY] * 4 + [HOLD] * 2 + [HOLD] * 2 + [NBI_VIEW] * 6 + [HOLD] * 2 + [HOLD] * 2
            + [FUSED_MEMORY] * 4 + [WLI_ONLY] * 4)
LAST_NBI = 15


def run(frames, config=None, sinks=(), engine=None):
    engine = engine or FusingEngine((32, 32))
    pipeline = build_pipeline(engine=engine, endoscope=MemorySource(frames, "scripted endoscope", FPS),
                              endoscope_config=config, style=NO_HUD, warmup_frames=0, sinks=sinks)
    return list(pipeline), pipeline.report(), engine


def test_modes_follow_the_script_and_memory_masks_equal_segment_pair_on_the_crops(tmp_path):
    frames = scripted_stream(SCRIPT)
    log = tmp_path / "frames.csv"
    results, report, engine = run(frames, sinks=[FrameLogSink(log)])
    assert [r.mode for r in results] == EXPECTED
    x, y, w, h = BOX
    inside_box = np.zeros(FRAME, bool)
    inside_box[y:y + h, x:x + w] = True
    remembered_crop = frames[LAST_NBI][y:y + h, x:x + w]
    for r in results:
        area = r.extras["content_area"]
        assert (area.x, area.y, area.w, area.h) == BOX
        changed = (r.overlay != r.frame).any(axis=2)
        assert not (r.mask.astype(bool) & ~area.inside(FRAME)).any()  # the mask never leaves the image
        assert not (changed & ~r.mask.astype(bool)).any()  # nor does the overlay (no HUD here)
        crop = r.frame[y:y + h, x:x + w]
        if r.mode == FUSED_MEMORY:
            assert r.nbi_index == LAST_NBI and r.extras["nbi_age_s"] == pytest.approx((r.index - LAST_NBI) / FPS)
            expected = segment_pair(engine, crop, remembered_crop).mask * area.shape_mask()
            assert np.array_equal(r.mask[y:y + h, x:x + w], expected)
            assert r.mask.any() and not np.array_equal(expected, segment_pair(engine, crop, None).mask)
        elif r.mode == WLI_ONLY:
            assert np.array_equal(r.mask[y:y + h, x:x + w], segment_pair(engine, crop, None).mask * area.shape_mask())
        else:  # NBI and HOLD: no mask, the frame passes unchanged
            assert not r.mask.any() and np.array_equal(r.overlay, r.frame)
        assert not (r.mask.astype(bool) & ~inside_box).any()
    assert [r.extras["view_similarity"] is not None and r.extras["view_similarity"] < 0.75
            for r in results[-4:]] == [True] * 4

    assert report["frames"] == len(SCRIPT)
    assert report["modes"] == {m: EXPECTED.count(m) for m in set(EXPECTED)}
    endo = report["endoscope"]
    assert endo["switches"] == 2 and endo["memory"]["view_gate_fallbacks"] == 4
    assert endo["memory"]["wli_only_reasons"] == {"nbi_never_seen": 4, "memory_too_old": 0, "view_changed": 4}
    assert endo["memory"]["memory_age_ms"]["max"] == pytest.approx((23 - LAST_NBI) / FPS * 1000)
    assert endo["content_area"]["area"] == list(BOX)

    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LOG_COLUMNS and len(rows) == len(results)
    for row, r in zip(rows, results, strict=True):
        assert (int(row["frame"]), row["mode"], int(row["mask_pixels"])) == (r.index, r.mode, int(r.mask.sum()))
        assert float(row["time_s"]) == pytest.approx(r.index / FPS, abs=1e-4)
    fused = rows[EXPECTED.index(FUSED_MEMORY)]
    assert (fused["modality"], fused["nbi_frame"]) == ("WLI", str(LAST_NBI))
    assert float(fused["nbi_age_ms"]) == pytest.approx((int(fused["frame"]) - LAST_NBI) / FPS * 1000, abs=0.1)


def test_memory_age_limit_and_gate_off():
    frames = scripted_stream(SCRIPT)
    results, report, _ = run(frames, EndoscopeConfig(nbi_memory_s=0.18, view_gate=0.0))
    modes = [r.mode for r in results]
    # ages (i - 15) / 30 s: frame 20 (0.167 s) fuses, 21 on (0.2 s and more) are too old;
    # with the gate off the moved-away frames are only judged by age
    assert modes[20] == FUSED_MEMORY and modes[21:] == [WLI_ONLY] * 7
    assert report["endoscope"]["memory"]["wli_only_reasons"]["view_changed"] == 0


def test_a_stream_that_never_shows_nbi_is_wli_only_with_a_clear_report():
    results, report, engine = run(scripted_stream("W" * 12))
    assert [r.mode for r in results] == [HOLD] * 2 + [WLI_ONLY] * 10
    assert engine.calls == [False] * 10
    assert report["endoscope"]["memory"]["wli_only_reasons"]["nbi_never_seen"] == 10
    assert report["endoscope"]["memory"]["nbi_looks"] == 0


def test_an_all_black_stream_keeps_flowing_and_holds_every_frame():
    frames = [np.zeros((*FRAME, 3), np.uint8)] * 9
    results, report, engine = run(frames)
    assert len(results) == 9 and all(r.mode == HOLD and not r.mask.any() for r in results)
    assert engine.calls == [] and report["modes"] == {HOLD: 9}
    assert report["endoscope"]["content_area"]["found"] is False


def test_a_layout_change_mid_run_moves_the_content_area_and_the_mask_with_it():
    scene = SyntheticScene(0, IMAGE)
    moved_box = (20, 50, 110, 94)
    frames = [processor_frame(scene.frame(i / FPS)[0], BOX if i < 10 else moved_box) for i in range(24)]
    results, report, _ = run(frames)
    assert len(results) == 24
    last = results[-1]
    area = last.extras["content_area"]
    assert (area.x, area.y, area.w, area.h) == moved_box
    assert last.mode == WLI_ONLY and last.mask.any() and not (last.mask.astype(bool) & ~area.inside(FRAME)).any()
    assert report["endoscope"]["content_area"]["changes"] >= 1


def test_side_by_side_gives_true_pairs():
    scene = SyntheticScene(3, IMAGE)
    frames = []
    for i in range(6):
        wli, nbi, _ = scene.frame(i / FPS)
        frames.append(np.hstack([processor_frame(nbi, (10, 30, 110, 120), (180, 130)),
                                 processor_frame(wli, (10, 30, 110, 120), (180, 130))]))
    results, report, engine = run(frames, EndoscopeConfig(layout="side-by-side:nbi-left"))
    assert [r.mode for r in results] == [FUSED] * 6 and engine.calls == [True] * 6
    for r, frame in zip(results, frames, strict=True):
        area = r.extras["content_area"]
        assert (area.x, area.y, area.w, area.h) == (140, 30, 110, 120)  # the right half's image
        nbi_crop = frame[30:150, 10:120]
        expected = segment_pair(engine, area.crop(frame), nbi_crop).mask * area.shape_mask()
        assert np.array_equal(area.crop(r.mask), expected) and not r.mask[:, :130].any()
    assert report["paired"] == 6


def test_run_endoscope_on_a_synthetic_recording_follows_truth_csv(synthetic_endoscope_recording, tmp_path, monkeypatch):
    from endofuse.cli import main
    from endofuse.model.synthetic_endoscope import SEGMENTS
    from endofuse.realtime.commands import run as run_command

    video, truth, frames = synthetic_endoscope_recording
    engine = FusingEngine((32, 32))
    monkeypatch.setattr(run_command, "open_pipeline_engine", lambda args: engine)
    results = []
    monkeypatch.setattr(run_command, "open_run_parts", _collecting(run_command.open_run_parts, results))
    out, log, report_path = tmp_path / "out.avi", tmp_path / "frames.csv", tmp_path / "report.json"
    # --stabilise off: each FUSED-MEMORY mask is compared with segment_pair on its own frame
    assert main(["run", "--endoscope", str(video), "--out", str(out), "--log", str(log), "--report",
                 str(report_path), "--warmup", "0", "--stabilise", "off"]) == 0
    n = len(truth)
    assert len(results) == n == json.loads(report_path.read_text())["frames"]
    assert int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == n
    with open(log, newline="") as f:
        assert [row["mode"] for row in csv.DictReader(f)] == [r.mode for r in results]

    moved_at = int(round(SEGMENTS[-1][0] * n))  # from here the scope looks at another place (same modality)
    first_nbi = min(int(t["frame"]) for t in truth if t["modality"] == "NBI")
    last_nbi = max(int(t["frame"]) for t in truth if t["modality"] == "NBI")
    # the modality tracker takes a mode on its 3rd frame: at the start and after each switch
    settling = {0, 1} | {i + k for i, t in enumerate(truth) if t["modality"] == "TRANSITION" for k in (1, 2)}
    for r, t in zip(results, truth, strict=True):
        i = r.index
        area = r.extras["content_area"]
        assert max(abs(a - int(t[k])) for a, k in zip((area.x, area.y, area.w, area.h), "xywh", strict=True)) <= 2
        assert not (r.mask.astype(bool) & ~area.inside(r.frame.shape)).any()
        if t["modality"] == "TRANSITION":
            assert r.mode == HOLD
        elif t["modality"] == "NBI":
            assert r.mode in (NBI_VIEW, HOLD) and not r.mask.any()
        elif i < first_nbi or i >= moved_at:
            assert r.mode in (WLI_ONLY, HOLD)
        else:
            assert r.mode in (FUSED_MEMORY, HOLD)
        if t["defect"] in ("dark", "glare"):
            assert r.mode == HOLD
        if r.mode == HOLD:  # only for a reason: a transition, a quality flag, or the modality settling
            assert t["modality"] == "TRANSITION" or r.extras["quality_flags"] or i in settling, i
            assert not r.mask.any()
        if r.mode == FUSED_MEMORY:
            assert r.nbi_index == last_nbi and r.extras["nbi_age_s"] == pytest.approx((i - last_nbi) / FPS)
            remembered = area.crop(frames[last_nbi])
            expected = segment_pair(engine, area.crop(frames[i]), remembered).mask * area.shape_mask()
            assert np.array_equal(area.crop(r.mask), expected)
    modes = [r.mode for r in results]
    assert modes[first_nbi:moved_at].count(FUSED_MEMORY) >= 3 and modes[moved_at:].count(WLI_ONLY) >= 3
    assert sum(m == NBI_VIEW for m in modes) >= 3


def _collecting(open_run_parts, results: list):
    """open_run_parts whose sinks also keep every FrameResult (what the video and the log were made of)."""
    from endofuse.realtime.output.sinks import CallbackSink

    def wrapped(args, source):
        engine, sinks, classifier = open_run_parts(args, source)
        return engine, [*sinks, CallbackSink(results.append)], classifier
    return wrapped


@pytest.mark.parametrize("argv, message", [
    (["--endoscope", "synthetic", "--nbi", "synthetic"], "--nbi cannot be used with --endoscope"),
    (["--wli", "synthetic", "--layout", "side-by-side"], "--layout applies to one endoscope stream"),
    (["--endoscope", "synthetic", "--view-gate", "2"], "--view-gate must be in"),
    (["--endoscope", "synthetic", "--content-area", "1,2"], "--content-area must be"),
    (["--endoscope", "interleaved:0"], "switches modes by hand"),
])
def test_run_endoscope_refuses_bad_options_in_one_line(argv, message, capsys):
    from endofuse.cli import main

    assert main(["run", *argv, "--frames", "3"]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bench_endoscope_measures_the_analysis_and_the_stream_beside_two_inputs(synthetic_endoscope_recording,
                                                                                 tmp_path, monkeypatch):
    import endofuse.realtime.engines as engines
    from endofuse.cli import main

    video, _, frames = synthetic_endoscope_recording
    monkeypatch.setattr(engines, "open_engine", lambda *a, **k: FusingEngine((32, 32)))
    out = tmp_path / "bench.json"
    assert main(["bench", "--endoscope", str(video), "--frames", "20", "--warmup", "2", "--ring", "60",
                 "--paced-fps", "100", "--json", str(out), "--stabilise", "ema", "--min-frames", "2"]) == 0
    result = json.loads(out.read_text())
    endo = result["endoscope"]
    assert endo["spec"] == str(video) and set(endo["modes"]) == {"max", "paced"}
    cost = endo["analysis_cpu_ms"]
    assert set(cost["stages_ms"]) == {"content area check", "modality", "quality"}
    assert cost["frame_size"] == [360, 640] and cost["view_signature_ms"]["p50"] > 0
    for name, mode in endo["modes"].items():
        assert endo["vs_two_input"][name] == pytest.approx(mode["fps"] / result["modes"][name]["fps"])
        assert sum(mode["mode_counts"].values()) == mode["frames"]
        # the stream runs the same stabiliser as the two-input pipeline it is compared with
        assert mode["temporal"]["settings"] == result["modes"][name]["temporal"]["settings"]
        assert mode["temporal"]["settings"]["stabilise"] == "ema" and mode["temporal"]["settings"]["min_frames"] == 2
    # max mode is lossless: the same modes as the pipeline run directly on the recording's first 22 frames
    fast = endo["modes"]["max"]
    assert fast["frames"] == 22 and fast["dropped"] == 0
    results, _, _ = run(frames[:22])
    assert fast["mode_counts"] == {m: [r.mode for r in results].count(m) for m in {r.mode for r in results}}
