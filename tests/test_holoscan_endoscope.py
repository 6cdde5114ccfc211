"""`endofuse run --runtime holoscan` with one endoscope stream (issue 21) and the stabiliser / overlay timing
(issue 22), against the native runtime on the same input and against truth.csv / `segment_pair`."""
import csv
import importlib.util
import json

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("holoscan") is None:
    pytest.skip("the [holoscan] extra is not installed", allow_module_level=True)

from test_realtime_endoscope import FusingEngine  # noqa: E402

from endofuse.cli import main  # noqa: E402
from endofuse.realtime.commands import run as run_command  # noqa: E402
from endofuse.realtime.input.content_area import ContentAreaTracker  # noqa: E402
from endofuse.realtime.pairing.nbi_memory import FUSED_MEMORY, HOLD, NBI_VIEW  # noqa: E402
from endofuse.realtime.segment import WLI_ONLY, segment_pair  # noqa: E402

from conftest import ConfidentEngine  # noqa: E402

COMPARED = ("frame", "modality", "mode", "nbi_frame", "view_similarity", "quality_flags", "status", "shown_frame",
            "overlay_age_frames", "mask_pixels")


def run_both(tmp_path, monkeypatch, engine, *argv) -> dict:
    """The same `run` on both runtimes: {runtime: (report, log rows, folder of mask PNGs)}."""
    monkeypatch.setattr(run_command, "open_pipeline_engine", lambda args: engine)
    out = {}
    for runtime in ("native", "holoscan"):
        folder = tmp_path / runtime
        assert main(["run", "--runtime", runtime, *map(str, argv), "--frames-dir", str(folder), "--log",
                     str(tmp_path / f"{runtime}.csv"), "--report", str(tmp_path / f"{runtime}.json"),
                     "--warmup", "0"]) == 0
        with open(tmp_path / f"{runtime}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        out[runtime] = json.loads((tmp_path / f"{runtime}.json").read_text()), rows, folder
    return out


def assert_same_frames(runs: dict) -> None:
    (native, native_rows, native_dir), (holo, holo_rows, holo_dir) = runs["native"], runs["holoscan"]
    assert set(holo) - set(native) == {"runtime", "holoscan"} and set(native) <= set(holo)
    assert [[r[k] for k in COMPARED] for r in holo_rows] == [[r[k] for k in COMPARED] for r in native_rows]
    assert holo["temporal"] == native["temporal"] and holo["overlay"]["timing"] == native["overlay"]["timing"]
    for row in native_rows:
        name = f"mask_{int(row['frame']):06d}.png"
        np.testing.assert_array_equal(cv2.imread(str(holo_dir / name)), cv2.imread(str(native_dir / name)))


def test_endoscope_recording_gives_native_modes_that_follow_truth_csv(synthetic_endoscope_recording, tmp_path,
                                                                      monkeypatch):
    video, truth, frames = synthetic_endoscope_recording
    engine = FusingEngine((32, 32))
    # --stabilise off: each FUSED-MEMORY mask is segment_pair(WLI crop, remembered NBI crop)
    runs = run_both(tmp_path, monkeypatch, engine, "--endoscope", video, "--stabilise", "off")
    assert_same_frames(runs)
    report, rows, masks = runs["holoscan"]
    assert report["frames"] == len(truth) == len(rows) and report["endoscope"] == runs["native"][0]["endoscope"]
    assert report["modes"] == runs["native"][0]["modes"] and report["modes"][FUSED_MEMORY] > 0
    last_nbi = max(int(t["frame"]) for t in truth if t["modality"] == "NBI")
    tracker = ContentAreaTracker("auto")  # the content area as the stage tracks it, frame by frame
    areas = [tracker.update(frame) for frame in frames]
    for row, t in zip(rows, truth, strict=True):
        if t["modality"] == "TRANSITION" or t["defect"] in ("dark", "glare"):
            assert row["mode"] == HOLD
        elif t["modality"] == "NBI":
            assert row["mode"] in (NBI_VIEW, HOLD)
        if row["mode"] in (NBI_VIEW, HOLD):
            assert row["mask_pixels"] == "0"  # never a mask on a frame it does not belong to
        if row["mode"] == FUSED_MEMORY:
            i = int(row["frame"])
            area = areas[i]
            mask = cv2.imread(str(masks / f"mask_{i:06d}.png"), cv2.IMREAD_GRAYSCALE) > 0
            expected = segment_pair(engine, area.crop(frames[i]), area.crop(frames[last_nbi])).mask * area.shape_mask()
            assert int(row["nbi_frame"]) == last_nbi
            assert np.array_equal(area.crop(mask), expected > 0) and not (mask & ~area.inside(mask.shape)).any()
    assert {r["mode"] for r in rows} >= {WLI_ONLY, FUSED_MEMORY, NBI_VIEW, HOLD}


def test_stabilised_masks_and_the_overlay_age_match_native(synthetic_endoscope_recording, tmp_path, monkeypatch):
    video, _, _ = synthetic_endoscope_recording
    # non-default stabiliser settings: a flag the Holoscan runtime ignored would change the masks
    runs = run_both(tmp_path, monkeypatch, ConfidentEngine((32, 32), threshold=0.45), "--endoscope", video,
                    "--stabilise", "ema", "--min-frames", "4", "--on-threshold", "0.7", "--off-threshold", "0.2",
                    "--frames", "45")
    assert_same_frames(runs)
    holo = runs["holoscan"][0]
    assert holo["temporal"]["settings"] == {"stabilise": "ema", "on_threshold": 0.7, "off_threshold": 0.2,
                                            "min_frames": 4, "ema_weight": 0.5}
    assert holo["overlay"]["age_frames"]["max"] == 0  # sync: every mask on its own frame
    assert any(int(r["mask_pixels"]) for r in runs["holoscan"][1])


def test_live_timing_and_frame_codes_are_measured_on_the_written_pixels(tmp_path, stand_in_engine):
    """`--overlay-timing live --frame-code` on two inputs: the age in the log is the frame drawn on minus the mask's
    frame, and the code read back from every written frame agrees with it."""
    assert main(["run", "--runtime", "holoscan", "--wli", "synthetic", "--nbi", "synthetic:1", "--frames", "20",
                 "--overlay-timing", "live", "--frame-code", "--log", str(tmp_path / "log.csv"), "--report",
                 str(tmp_path / "r.json"), "--warmup", "0"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ages = [int(r["shown_frame"]) - int(r["frame"]) for r in rows]
    assert [int(r["overlay_age_frames"]) for r in rows] == ages and report["overlay"]["timing"] == "live"
    codes = report["overlay"]["frame_code"]
    assert codes["read"] == 20 and codes["unreadable"] == codes["mismatched"] == 0
    assert codes["age_frames"]["max"] == max(ages)


def test_display_is_refused_in_one_line(capsys):
    assert main(["run", "--runtime", "holoscan", "--endoscope", "synthetic", "--frames", "3", "--display"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--display is not available with --runtime holoscan" in err and len(err.splitlines()) == 1


def test_holohub_style_app_takes_an_endoscope_section(tmp_path, stand_in_engine, capfd):
    from endofuse.realtime.holoscan.app import main as app_main  # what `python -m ...app` runs

    config = tmp_path / "app.yaml"
    config.write_text(f"""
wli_source: {{source: synthetic, frames: 24}}
endoscope: {{nbi_memory_s: 5, layout: single}}
overlay: {{stabilise: ema, min_frames: 2, overlay_timing: live}}
recorder: {{report: "{tmp_path / 'r.json'}", warmup_frames: 2}}
""")
    assert app_main(["--config", str(config)]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames"] == 24 == sum(report["modes"].values()) and report["nbi"] is None
    assert report["endoscope"]["memory"]["nbi_memory_s"] == 5 and report["overlay"]["timing"] == "live"
    assert report["temporal"]["settings"]["stabilise"] == "ema" and report["temporal"]["settings"]["min_frames"] == 2
    config.write_text('wli_source: {source: synthetic, frames: 5}\nnbi_source: {source: synthetic}\nendoscope: {}\n')
    capfd.readouterr()
    assert app_main(["--config", str(config)]) == 1
    err = capfd.readouterr().err.strip()
    assert "an 'endoscope' section takes one stream" in err and len(err.splitlines()) == 1


def test_endoscope_op_alone_decides_as_the_native_stage_on_third_party_rgb_frames(synthetic_endoscope_recording):
    """Scripted RGB numpy frames of an odd size (as a capture card's converter emits them) through the operator
    alone; the reference is `EndoscopeStage` fed the same frames in BGR, as the native capture thread feeds it."""
    from test_holoscan_operators import CollectOp, ScriptOp, run_graph

    from endofuse.realtime.holoscan.endoscope import EndofuseEndoscopeOp
    from endofuse.realtime.input.sources import Frame
    from endofuse.realtime.pairing.endoscope import EndoscopeConfig, EndoscopeStage

    _, _, frames = synthetic_endoscope_recording
    bgr = [cv2.resize(f, (427, 241), interpolation=cv2.INTER_AREA) for f in frames[:40]]

    def build(app):
        source = ScriptOp(app, name="capture", items=[np.ascontiguousarray(f[:, :, ::-1]) for f in bgr])
        endoscope = EndofuseEndoscopeOp(app, name="endoscope", input_size=(24, 40), channel_order="rgb")
        collect = CollectOp(app, name="collect", port="pair")
        app.add_flow(source, endoscope, {("out", "frame")})
        app.add_flow(endoscope, collect, {("pair", "pair")})
        return collect

    pairs = run_graph(build).got
    stage = EndoscopeStage(EndoscopeConfig())
    expected = [stage.prepare(Frame(i, i / 30, i / 30, f), (24, 40)) for i, f in enumerate(bgr)]
    assert len(pairs) == len(expected)
    for pair, want in zip(pairs, expected, strict=True):
        got = pair.endoscope
        assert (got.mode, got.modality, got.area, got.nbi_index, got.quality_flags) == \
               (want.mode, want.modality, want.area, want.nbi_index, want.quality_flags)
        assert pair.pairing.status == want.status and pair.channel_order == "rgb"
        np.testing.assert_array_equal(pair.wli.image, bgr[pair.wli.index])
        for name in ("wli_input", "nbi_input"):
            a, b = getattr(got, name), getattr(want, name)
            assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
    assert {p.endoscope.mode for p in pairs} >= {WLI_ONLY, NBI_VIEW, HOLD}
