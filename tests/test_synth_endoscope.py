"""`endofuse synth --video S --endoscope`: a processor output whose truth.csv the per-frame analysis must follow."""
from __future__ import annotations

import csv
import itertools

import cv2
import numpy as np
import pytest

from endofuse import cli
from endofuse.errors import InvalidOptionError
from endofuse.model.synthetic_endoscope import SyntheticEndoscope
from endofuse.realtime.input.content_area import ContentAreaTracker
from endofuse.realtime.input.frame_analysis import FrameAnalyzer
from endofuse.realtime.input.quality import assess_quality
from endofuse.realtime.modality import NBI, TRANSITION, WLI, ModalityTracker, read_modality

SIZE = "360x640"  # the smallest size whose blurred frames survive mp4v compression well enough


def _read_video(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("endoscope")
    assert cli.main(["synth", str(out), "--video", "2", "--endoscope", "--size", SIZE, "--seed", "3"]) == 0
    with open(out / "truth.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return out, rows, _read_video(out / "endoscope.mp4"), _read_video(out / "mask.mp4")


def test_writes_the_recording_its_truth_and_mask(clip):
    out, rows, frames, masks = clip
    assert list(rows[0])[:8] == ["frame", "time_s", "modality", "x", "y", "w", "h", "informative"]
    assert len(rows) == len(frames) == len(masks) == 60
    assert frames[0].shape == (360, 640, 3)
    assert [k for k, _ in itertools.groupby(r["modality"] for r in rows)] == [WLI, TRANSITION, NBI, TRANSITION, WLI]
    assert {r["defect"] for r in rows} == {"", "blur", "dark", "glare"}
    assert all(r["informative"] == "0" for r in rows if r["modality"] == TRANSITION or r["defect"])
    for row, mask in zip(rows, masks, strict=True):
        x, y, w, h = (int(row[k]) for k in "xywh")
        outside = mask[..., 0] > 127
        outside[y:y + h, x:x + w] = False
        assert not outside.any()  # the lesion is inside the content area


def test_analysis_follows_the_truth(clip):
    """Content area = the truth box; modality readings = truth outside transitions; the tracker's modes = truth
    except TRANSITION on its first two frames and on the first frame after each transition (the last transition
    frame already reads as the new mode and counts as one of the 3 frames a switch needs). Quality: every
    informative frame passes; each blurred, dark or glare frame is flagged for it (a dark one may also read as
    blurred: at a quarter of the exposure little detail stands above the noise)."""
    _, rows, frames, _ = clip
    areas, modality = ContentAreaTracker("auto"), ModalityTracker(switch_frames=3)
    expected = []
    for i, row in enumerate(rows):
        after_transition = i > 0 and rows[i - 1]["modality"] == TRANSITION and row["modality"] != TRANSITION
        expected.append(TRANSITION if i < 2 or after_transition else row["modality"])
    modes = []
    for row, frame in zip(rows, frames, strict=True):
        area = areas.update(frame)
        assert abs(area.x - int(row["x"])) <= 1 and abs(area.y - int(row["y"])) <= 1
        assert abs(area.w - int(row["w"])) <= 2 and abs(area.h - int(row["h"])) <= 2
        crop = area.crop(frame)
        modes.append(modality.update(crop))
        if row["modality"] != TRANSITION:
            assert read_modality(crop).label == row["modality"], row
            quality = assess_quality(crop)
            assert (row["defect"] in quality.flags) if row["defect"] else quality.ok, (row, quality)
    assert modes == expected
    assert modality.switches == 2 and areas.redetections == 0


def test_modes_look_like_the_real_sample_in_colour(clip):
    """The mean R/G of the synthetic frames lies in the real sample's ranges (WLI 1.51-1.90, NBI 0.66-1.09)."""
    _, rows, frames, _ = clip
    for row, frame in zip(rows, frames, strict=True):
        if row["modality"] != TRANSITION and not row["defect"]:
            x, y, w, h = (int(row[k]) for k in "xywh")
            rg = read_modality(frame[y:y + h, x:x + w]).rg_ratio
            assert (1.51 <= rg <= 1.90) if row["modality"] == WLI else (0.66 <= rg <= 1.09), (row, rg)


@pytest.fixture(scope="module")
def rendered():
    clip = SyntheticEndoscope(60, size=(360, 640), seed=2)
    return clip.truth_rows(), [clip.render(i)[0] for i in range(clip.frames)]


def test_rendered_frames_quality_is_the_truth(rendered):
    for row, frame in zip(*rendered, strict=True):
        if row["modality"] != TRANSITION:
            crop = frame[row["y"]:row["y"] + row["h"], row["x"]:row["x"] + row["w"]]
            quality = assess_quality(crop)
            assert (row["defect"] in quality.flags) if row["defect"] else quality.ok, (row, quality)


def test_frame_analyzer_marks_what_is_worth_segmenting(rendered):
    """Segmentable = settled mode (the hand rule of test_analysis_follows_the_truth) and informative in truth."""
    rows, frames = rendered
    analyzer = FrameAnalyzer()
    for i, (row, frame) in enumerate(zip(rows, frames, strict=True)):
        a = analyzer.analyze(frame)
        assert (a.area.x, a.area.y, a.area.w, a.area.h) == (row["x"], row["y"], row["w"], row["h"])
        settled = i >= 2 and row["modality"] != TRANSITION and rows[i - 1]["modality"] != TRANSITION
        assert a.segmentable is (settled and row["informative"] == 1), row
        assert a.modality == (row["modality"] if settled else TRANSITION)
        assert a.crop(frame).shape[:2] == (row["h"], row["w"])
    summary = analyzer.summary()
    defects = [r["defect"] for r in rows]
    assert summary["modality"]["switches"] == 2 and summary["content_area"]["redetections"] == 0
    assert summary["quality"]["frames"] == 60
    assert summary["quality"]["blur"] >= defects.count("blur") and summary["quality"]["glare"] == defects.count("glare")


def test_a_zoom_mid_clip_is_one_layout_change():
    clip = SyntheticEndoscope(60, size=(180, 320), seed=1, zoom_at=0.5)
    tracker = ContentAreaTracker("auto", confirm_frames=5)
    boxes = []
    for i in range(60):
        a = tracker.update(clip.render(i)[0])
        boxes.append((a.x, a.y, a.w, a.h))
    truth = [tuple(int(r[k]) for k in "xywh") for r in clip.truth_rows()]
    assert truth[0] != truth[-1]
    assert boxes[:30] == truth[:30] and boxes[35:] == truth[35:]
    assert tracker.redetections == 1


def test_too_short_a_clip_is_one_clear_line(tmp_path):
    with pytest.raises(InvalidOptionError, match="at least 60"):
        SyntheticEndoscope(59)
    assert cli.main(["synth", str(tmp_path / "x"), "--video", "1", "--endoscope"]) != 0
    assert not (tmp_path / "x").exists()


def test_nbi_look_returns_to_the_same_view_then_the_scope_drifts_away():
    """The recording's WLI view right after the NBI look is the place NBI saw (the default view gate passes), and a
    couple of seconds later the scope has moved on (the gate fails): both NBI-memory outcomes occur with defaults."""
    from endofuse.realtime.pairing.nbi_memory import DEFAULT_VIEW_GATE, view_signature, view_similarity

    scope = SyntheticEndoscope(300, size=(360, 640), fps=30.0, seed=3)
    truth = scope.truth_rows()
    modality = [row["modality"] for row in truth]
    first_switch = modality.index(TRANSITION)
    back = max(i for i, m in enumerate(modality) if m == NBI) + 1
    back = next(i for i in range(back, len(truth)) if modality[i] == WLI and truth[i]["informative"])
    later = back + 75  # 2.5 s on, still the same scene before the scope moves to scene B

    def signature(i):
        row = truth[i]
        frame, _ = scope.render(i)
        return view_signature(frame[row["y"]:row["y"] + row["h"], row["x"]:row["x"] + row["w"]])

    before = signature(first_switch - 1)
    assert modality[first_switch - 1] == WLI and modality[later] == WLI
    assert view_similarity(before, signature(back)) >= DEFAULT_VIEW_GATE
    assert view_similarity(before, signature(later)) < DEFAULT_VIEW_GATE
