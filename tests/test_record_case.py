"""The case record of `run --case`: lesion events from a scripted per-frame log, key-frame choice (sharpest,
content-area crop, nothing from outside it) and the case folder of a synthetic processor recording."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from test_realtime_endoscope import FusingEngine, _collecting

from endofuse.realtime.input.content_area import ContentArea
from endofuse.realtime.input.quality import assess_quality
from endofuse.realtime.output.frame_log import LOG_COLUMNS
from endofuse.realtime.pairing.nbi_memory import FUSED_MEMORY, HOLD, NBI_VIEW
from endofuse.realtime.pipeline import FrameResult
from endofuse.realtime.record.case import CaseRecorder, content_crop, extract_events, load_case
from endofuse.realtime.segment import WLI_ONLY


def _row(frame: int, mode: str, pixels: int, nbi: int | str = "") -> dict:
    return {**dict.fromkeys(LOG_COLUMNS, ""), "frame": str(frame), "time_s": f"{frame / 10:.4f}", "mode": mode,
            "mask_pixels": str(pixels), "nbi_frame": str(nbi)}


def test_events_from_a_scripted_log():
    W, M, N, H = WLI_ONLY, FUSED_MEMORY, NBI_VIEW, HOLD
    script = [
        (W, 0), (W, 5), (W, 7), (W, 0),                  # 1-2: a blip of 2 frames < min_frames 3: no event
        (W, 10), (W, 30), (N, 0), (N, 0), (H, 0),        # 4-: an event bridged over an NBI look and a HOLD frame
        (M, 50), (M, 20), (W, 0),                        # ... fused with NBI frame 7, ends at frame 11
        (H, 0), (W, 4), (W, 4), (W, 4),                  # 13-15: exactly min_frames, runs to the end of the log
    ]
    rows = [_row(i, mode, px, 7 if mode == M else "") for i, (mode, px) in enumerate(script)]
    events = extract_events(rows, min_frames=3, fps=10.0)
    assert [(e.start_frame, e.end_frame, e.shown_frames, e.peak_area_px) for e in events] == [(4, 10, 4, 50),
                                                                                             (13, 15, 3, 4)]
    first, second = events
    assert first.modes == [W, N, H, M] and first.nbi_frames == [7]
    assert (first.start_s, first.end_s, first.duration_s) == (0.4, 1.0, 0.7)
    assert second.modes == [W] and second.duration_s == pytest.approx(0.3) and [e.id for e in events] == [1, 2]
    # the same log read back from CSV (strings) gives the same events
    assert extract_events(rows, 3, 10.0) == extract_events([{k: str(v) for k, v in r.items()} for r in rows], 3, 10.0)
    assert extract_events(rows, min_frames=5, fps=10.0) == []


def _processor_frame(rng, sharp: bool) -> np.ndarray:
    """A 200x300 processor output: a textured image in an octagon at (120, 20), white 'patient text' at left."""
    frame = np.zeros((200, 300, 3), np.uint8)
    tissue = rng.integers(60, 200, (160, 160, 3), dtype=np.uint8)
    if not sharp:
        tissue = cv2.GaussianBlur(tissue, (0, 0), 4)
    frame[20:180, 120:280] = tissue
    frame[10:30, 5:100] = 255  # on-screen text, outside the content area
    return frame


OCTAGON = ((40, 0), (120, 0), (159, 40), (159, 120), (120, 159), (40, 159), (0, 120), (0, 40))


def test_key_frame_is_the_sharpest_content_area_crop(tmp_path):
    rng = np.random.default_rng(0)
    area = ContentArea(120, 20, 160, 160, OCTAGON)
    sharp_at = 3
    frames = [_processor_frame(rng, sharp=i == sharp_at) for i in range(6)]
    recorder = CaseRecorder(tmp_path / "case", fps=30.0, min_frames=3)
    for i, frame in enumerate(frames):
        mask = np.zeros(frame.shape[:2], np.uint8)
        mask[60:120, 160:220] = 1  # inside the area
        result = FrameResult(i, frame.copy(), mask, WLI_ONLY, {}, 1.0, frame, "missing",
                             extras={"time_s": i / 30, "modality": "WLI", "quality_flags": (), "content_area": area})
        recorder.write(result)
    recorder.close()
    record = load_case(tmp_path / "case")
    (event,) = record["events"]
    (key,) = event["key_frames"]
    assert key["frame"] == sharp_at and key["kind"] == "wli" and key["content_area"] == [120, 20, 160, 160]
    sharpness = [assess_quality(content_crop(f, area)).sharpness for f in frames]
    assert int(np.argmax(sharpness)) == sharp_at  # the independent measure agrees with the choice
    raw = cv2.imread(str(tmp_path / "case" / key["raw"]))
    inside = area.shape_mask()
    expected = frames[sharp_at][20:180, 120:280] * inside[..., None]
    assert np.array_equal(raw, expected)
    assert raw.shape == (160, 160, 3) and not raw[~inside].any()  # the black corners: nothing from the border
    mask = cv2.imread(str(tmp_path / "case" / key["mask"]), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(mask > 0, np.pad(np.ones((60, 60), bool), ((40, 60), (40, 60))))
    video = cv2.VideoCapture(str(tmp_path / "case" / record["video"]))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6 and int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 160


def test_run_case_on_a_synthetic_recording(synthetic_endoscope_recording, tmp_path, monkeypatch):
    from endofuse.cli import main
    from endofuse.realtime.commands import run as run_command

    video, truth, frames = synthetic_endoscope_recording
    monkeypatch.setattr(run_command, "open_pipeline_engine", lambda args: FusingEngine((32, 32)))
    results = []
    monkeypatch.setattr(run_command, "open_run_parts", _collecting(run_command.open_run_parts, results))
    case = tmp_path / "case"
    assert main(["run", "--endoscope", str(video), "--case", str(case), "--warmup", "0", "--stabilise", "off",
                 "--min-frames", "3"]) == 0
    record = load_case(case)
    with open(case / "frames.csv", newline="") as f:
        log = list(csv.DictReader(f))
    assert len(log) == len(results) == record["frames"]["count"] == len(truth)
    # brute force: runs of frames showing a mask, bridged over frames that carry none (NBI, HOLD)
    runs, current = [], []
    for r in results:
        if r.mode in (NBI_VIEW, HOLD):
            continue
        if r.mask.any():
            current.append(r)
        else:
            runs.append(current)
            current = []
    runs = [run for run in [*runs, current] if len(run) >= 3]
    assert runs, "the stand-in engine should show the synthetic lesion"
    assert [(e["start_frame"], e["end_frame"]) for e in record["events"]] == [(r[0].index, r[-1].index) for r in runs]
    for event, run in zip(record["events"], runs, strict=True):
        wli = next(k for k in event["key_frames"] if k["kind"] == "wli")
        area = next(r.extras["content_area"] for r in run if r.index == wli["frame"])
        informative = [r for r in run if not r.extras["quality_flags"] and r.extras["modality"] == "WLI"]
        best = max(informative, key=lambda r: assess_quality(content_crop(r.frame, area)).sharpness)
        assert wli["frame"] == best.index
        raw = cv2.imread(str(case / wli["raw"]))
        assert np.array_equal(raw, content_crop(frames[wli["frame"]], area))
        nbi = [k for k in event["key_frames"] if k["kind"] == "nbi"]
        fused_with = {r.nbi_index for r in run if r.mode == FUSED_MEMORY}
        assert [k["frame"] for k in nbi] == sorted(fused_with)[-1:]
        if nbi:
            nbi_area = next(r.extras["content_area"] for r in results if r.index == nbi[0]["frame"])
            assert np.array_equal(cv2.imread(str(case / nbi[0]["raw"])), content_crop(frames[nbi[0]["frame"]],
                                                                                      nbi_area))
    assert any(k["kind"] == "nbi" for e in record["events"] for k in e["key_frames"])  # the recording's NBI look
    page = (case / "review.html").read_text()
    assert page.count('class="event"') == len(runs) and "Ni classification" in page and "http" not in page
    assert json.loads((case / ".endofuse-outputs.json").read_text())["files"]


def test_holoscan_runtime_refuses_case(tmp_path, capsys):
    from endofuse.cli import main

    code = main(["run", "--wli", "synthetic", "--frames", "2", "--runtime", "holoscan", "--case",
                 str(tmp_path / "case")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "--runtime holoscan does not record --case" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "case").exists()


def test_a_crash_keeps_every_finished_event_and_close_finishes_the_open_one(tmp_path):
    rng = np.random.default_rng(1)
    area = ContentArea(120, 20, 160, 160)
    recorder = CaseRecorder(tmp_path / "case", fps=30.0, min_frames=3)
    for i, shown in enumerate([1, 1, 1, 0, 1, 1, 1]):
        frame = _processor_frame(rng, sharp=True)
        mask = np.zeros(frame.shape[:2], np.uint8)
        mask[60:100, 150:200] = shown
        recorder.write(FrameResult(i, frame.copy(), mask, WLI_ONLY, {}, 1.0, frame, "missing",
                                   extras={"time_s": i / 30, "modality": "WLI", "quality_flags": (),
                                           "content_area": area}))
    # a crash now (no close): the first event, ended by frame 3, is on disk with its key frames
    on_disk = json.loads((tmp_path / "case" / "case.json").read_text())
    assert [(e["start_frame"], e["end_frame"]) for e in on_disk["events"]] == [(0, 2)]
    assert all((tmp_path / "case" / on_disk["events"][0]["key_frames"][0][part]).is_file()
               for part in ("raw", "overlay", "mask"))
    recorder.close()  # what Ctrl-C / SIGTERM do through the pipeline's close: the open event is finished too
    assert [(e["start_frame"], e["end_frame"]) for e in load_case(tmp_path / "case")["events"]] == [(0, 2), (4, 6)]
    assert (tmp_path / "case" / "review.html").is_file()


def test_a_case_folder_with_foreign_files_is_refused(tmp_path, capsys, monkeypatch):
    from endofuse.cli import main
    from endofuse.realtime.commands import run as run_command

    monkeypatch.setattr(run_command, "open_pipeline_engine", lambda args: FusingEngine((32, 32)))
    case = tmp_path / "case"
    case.mkdir()
    (case / "notes.txt").write_text("the clinician's")
    assert main(["run", "--wli", "synthetic", "--frames", "2", "--case", str(case)]) == 1
    err = capsys.readouterr().err.strip()
    assert "already holds 1 file(s) endofuse did not write (e.g. 'notes.txt')" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in case.iterdir()) == ["notes.txt"]
