"""Per-frame analysis of one endoscope stream: modality, content area (and below: quality gate, layouts).

The references are independent of the code under test: the file names of the
real sample (`_1` = WLI, `_2` = NBI), boxes and octagons drawn here by hand,
and hand-written expected mode sequences.
"""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from endofuse.errors import InvalidInputError, InvalidOptionError
from endofuse.model.synthetic_endoscope import degrade
from endofuse.realtime.input import content_area as content_area_module
from endofuse.realtime.input.content_area import (
    ContentArea,
    ContentAreaTracker,
    detect_content_area,
    parse_content_area,
)
from endofuse.realtime.input.layout import Layout, parse_layout, split_side_by_side
from endofuse.realtime.input.quality import QualityThresholds, assess_quality
from endofuse.realtime.modality import NBI, TRANSITION, WLI, ModalityTracker, read_modality

OUT_SIZE = (360, 640)  # (H, W) of the small "processor output" frames built here


def _sample_images(sample_dir) -> list[tuple[str, np.ndarray]]:
    """(expected label, BGR image) for the 10 real frames, the label from the reference CSV's columns."""
    rows = list(csv.DictReader(open(sample_dir / "Training.csv", encoding="utf-8")))
    out = []
    for row in rows:
        out.append((WLI, cv2.imread(str(sample_dir / row["wli_path"]))))
        out.append((NBI, cv2.imread(str(sample_dir / row["nbi_path"]))))
    return out


@pytest.fixture(scope="module")
def sample_images(sample_data_dir):
    return _sample_images(sample_data_dir)


def octagon(h: int, w: int, cut: float = 0.2) -> np.ndarray:
    """bool mask of an octagon filling an h x w box, corners cut by `cut` * min(h, w), drawn by hand."""
    c = cut * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    dx, dy = np.minimum(xx, w - xx), np.minimum(yy, h - yy)
    return dx + dy >= c


def processor_frame(image: np.ndarray, box=(250, 20, 320, 320), size=OUT_SIZE, shape: str = "octagon",
                    text: str = "NBI") -> np.ndarray:
    """`image` resized into `box` (x, y, w, h) of a black output frame, cut to `shape`, with on-screen text left."""
    x, y, w, h = box
    frame = np.zeros((*size, 3), np.uint8)
    img = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    if shape == "octagon":
        img[~octagon(h, w)] = 0
    frame[y:y + h, x:x + w] = img
    for i, line in enumerate(("ID 000123 DOE^J", "M 64Y", "06/12/2026 00:31:07", f"{text}  Enh A5", "Zoom x1.0")):
        cv2.putText(frame, line, (8, 30 + 26 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (235, 235, 235), 1, cv2.LINE_AA)
    return frame


def placed_mask(box=(250, 20, 320, 320), size=OUT_SIZE, shape: str = "octagon") -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros(size, bool)
    mask[y:y + h, x:x + w] = octagon(h, w) if shape == "octagon" else True
    return mask


# ---- modality ----

def test_modality_of_the_ten_real_sample_frames(sample_images):
    assert len(sample_images) == 10
    got = [read_modality(image).label for _, image in sample_images]
    assert got == [label for label, _ in sample_images]


def test_modality_of_real_frames_inside_a_processor_output(sample_images):
    """Border and text around the image: the detected content area's crop reads the right mode."""
    for label, image in sample_images:
        frame = processor_frame(image, text=label)
        crop = detect_content_area(frame).crop(frame)
        assert read_modality(crop).label == label


def test_modality_rule_against_numpy_statistics():
    """Flat colours: the ratio is sum(R) / sum(G), black and white pixels excluded, cut points as documented."""
    # 96 columns, sampled every 3rd: blocks of multiples of 3 keep the full image's proportions in the sample
    img = np.zeros((32, 96, 3), np.uint8)
    img[:, :48] = (100, 100, 150)  # R/G 1.5
    img[:, 48:72] = (90, 120, 96)  # R/G 0.8
    img[:, 72:84] = 255  # glare: excluded; 84:96 stays black: excluded
    reading = read_modality(img)  # by hand, per row: (48 * 150 + 24 * 96) / (48 * 100 + 24 * 120)
    assert reading.rg_ratio == pytest.approx(9504 / 7680, rel=1e-6)
    assert reading.label == TRANSITION and reading.brightness == pytest.approx(img.mean(), rel=1e-6)
    assert read_modality(np.full((50, 50, 3), (100, 100, 140), np.uint8)).label == WLI  # 1.40
    assert read_modality(np.full((50, 50, 3), (100, 100, 115), np.uint8)).label == NBI  # 1.15
    assert read_modality(np.full((50, 50, 3), (100, 100, 127), np.uint8)).label == TRANSITION  # 1.27: blended
    assert read_modality(np.full((50, 50, 3), (10, 10, 30), np.uint8)).label == TRANSITION  # dark
    with pytest.raises(InvalidInputError, match="HxWx3"):
        read_modality(np.zeros((5, 5), np.uint8))


def _switch_sequence(wli: np.ndarray, nbi: np.ndarray) -> tuple[list[np.ndarray], list[str], list[str]]:
    """WLI x5, a 4-frame transition, NBI x6, a transition back, WLI x5: (frames, readings, modes), by hand.

    A transition is a dimmed cross-fade whose colour sits between the modes, two dark frames, and a
    dimmed cross-fade already near the new mode (it reads as the new mode and counts towards the switch).
    Modes: TRANSITION on each frame until a mode has been read on 3 frames (not counting TRANSITION readings).
    """
    def blend(a, b, t, gain):
        return np.clip((a.astype(np.float32) * (1 - t) + b.astype(np.float32) * t) * gain, 0, 255).astype(np.uint8)

    to_nbi = [blend(wli, nbi, 0.4, 0.7), blend(wli, nbi, 0.5, 0.05), blend(wli, nbi, 0.6, 0.05),
              blend(wli, nbi, 0.8, 0.7)]
    to_wli = [blend(nbi, wli, 0.6, 0.7), blend(nbi, wli, 0.5, 0.05), blend(nbi, wli, 0.4, 0.05),
              blend(nbi, wli, 0.8, 0.7)]
    frames = [wli] * 5 + to_nbi + [nbi] * 6 + to_wli + [wli] * 5
    readings = [WLI] * 5 + [TRANSITION] * 3 + [NBI] + [NBI] * 6 + [TRANSITION] * 3 + [WLI] + [WLI] * 5
    modes = ([TRANSITION] * 2 + [WLI] * 3 + [TRANSITION] * 4 + [TRANSITION] + [NBI] * 5
             + [TRANSITION] * 4 + [TRANSITION] + [WLI] * 4)
    return frames, readings, modes


def test_tracker_follows_switches_with_transition_frames(sample_images):
    (_, wli), (_, nbi) = sample_images[0], sample_images[1]
    wli, nbi = (processor_frame(im) for im in (wli, nbi))
    frames, readings, expected = _switch_sequence(wli, nbi)
    tracker = ModalityTracker(switch_frames=3)
    area = detect_content_area(frames[0])
    got = [tracker.update(area.crop(frame)) for frame in frames]
    assert [read_modality(area.crop(f)).label for f in frames] == readings
    assert got == expected
    assert tracker.switches == 2
    summary = tracker.summary()
    assert summary["frames"] == {m: expected.count(m) for m in (WLI, NBI, TRANSITION)}
    assert summary["stable"] == WLI


def test_tracker_ignores_a_flicker_and_keeps_a_pending_switch_through_transition_frames():
    t = ModalityTracker(switch_frames=3)
    labels = [WLI, WLI, WLI, NBI, WLI, WLI, NBI, TRANSITION, NBI, TRANSITION, NBI, NBI]
    want = [TRANSITION, TRANSITION, WLI, TRANSITION, WLI, WLI, TRANSITION, TRANSITION, TRANSITION, TRANSITION,
            NBI, NBI]
    assert [t.update_label(x) for x in labels] == want
    assert t.switches == 1
    with pytest.raises(InvalidOptionError, match="switch_frames"):
        ModalityTracker(switch_frames=0)


# ---- content area ----

@pytest.mark.parametrize("box,shape", [((250, 20, 320, 320), "octagon"), ((180, 30, 400, 300), "rect"),
                                       ((301, 17, 251, 333), "octagon")])
def test_detects_the_content_area_beside_border_and_text(sample_images, box, shape):
    frame = processor_frame(sample_images[0][1], box=box, shape=shape)
    area = detect_content_area(frame)
    assert (area.x, area.y, area.w, area.h) == box
    truth = placed_mask(box, shape=shape)
    inside = area.inside(frame.shape)
    assert not (inside & ~truth).any()  # never outside the image
    assert (inside & truth).sum() >= 0.97 * truth.sum()
    crop = area.crop(frame)
    assert crop.base is not None and np.shares_memory(crop, frame)  # a view


def test_content_area_of_a_frame_without_border_and_of_a_black_frame(sample_images):
    image = cv2.resize(sample_images[6][1], (320, 200))  # the one real frame with no black border
    assert detect_content_area(image) == ContentArea(0, 0, 320, 200)
    assert detect_content_area(np.zeros((120, 160, 3), np.uint8)) == ContentArea(0, 0, 160, 120)


def test_inside_mask_of_an_outline_against_a_hand_filled_polygon():
    area = ContentArea(10, 5, 20, 10, outline=((0, 0), (19, 0), (19, 9), (0, 9)))
    inside = area.inside((30, 40))
    ref = np.zeros((30, 40), bool)
    ref[5:15, 10:30] = True
    assert (inside == ref).all()
    assert (ContentArea(10, 5, 20, 10).inside((30, 40)) == ref).all()


def test_parse_content_area():
    assert parse_content_area("auto") == "auto"
    assert parse_content_area("FULL") == "full"
    assert parse_content_area("10,20,300,200") == ContentArea(10, 20, 300, 200)
    for bad in ("10,20,300", "a,b,c,d", "-1,0,100,100", "0,0,8,100", "box"):
        with pytest.raises(InvalidOptionError, match="--content-area"):
            parse_content_area(bad)
    with pytest.raises(InvalidInputError, match="outside the 640x360 frame"):
        ContentAreaTracker("400,0,300,300").update(np.zeros((*OUT_SIZE, 3), np.uint8))
    assert ContentAreaTracker("full").update(np.zeros((*OUT_SIZE, 3), np.uint8)) == ContentArea(0, 0, 640, 360)


def test_tracker_redetects_on_a_layout_change_not_every_frame(sample_images, monkeypatch):
    calls = []
    real_detect = content_area_module.detect_content_area
    monkeypatch.setattr(content_area_module, "detect_content_area", lambda f: calls.append(1) or real_detect(f))
    small, zoomed, moved = (250, 20, 320, 320), (230, 0, 400, 360), (20, 150, 200, 200)
    images = [im for _, im in sample_images[:4]]
    tracker = ContentAreaTracker("auto", confirm_frames=5)
    # 24 frames of one layout: the scene changes (other real frames, WLI and NBI) and one frame goes dark
    for i in range(24):
        frame = processor_frame(images[i % 4], box=small)
        if i == 12:
            frame[20:340, 250:570] //= 12
        area = tracker.update(frame)
        assert (area.x, area.y, area.w, area.h) == small
    assert len(calls) == 1 and tracker.redetections == 0
    # the processor's zoom: a bigger image; taken after `confirm_frames` frames, then no more detections
    got = [tracker.update(processor_frame(images[i % 4], box=zoomed)) for i in range(20)]
    assert [(a.x, a.y, a.w, a.h) for a in got] == [small] * 4 + [zoomed] * 16
    assert tracker.redetections == 1 and len(calls) == 2
    # another scope: a smaller image elsewhere, away from the old centre
    got = [tracker.update(processor_frame(images[i % 4], box=moved)) for i in range(20)]
    assert [(a.x, a.y, a.w, a.h) for a in got][-15:] == [moved] * 15
    assert tracker.redetections == 2 and tracker.changes == 2 and len(calls) == 3
    summary = tracker.summary()
    assert summary["area"] == list(moved) and summary["redetections"] == 2


def test_tracker_on_a_black_stream_uses_the_full_frame_and_finds_the_image_when_it_appears(sample_images):
    tracker = ContentAreaTracker("auto", confirm_frames=5)
    black = np.zeros((*OUT_SIZE, 3), np.uint8)
    for _ in range(7):
        assert tracker.update(black) == ContentArea(0, 0, 640, 360)
    assert tracker.summary()["found"] is False
    frame = processor_frame(sample_images[1][1])
    areas = [tracker.update(frame) for _ in range(6)]
    assert (areas[-1].x, areas[-1].y, areas[-1].w, areas[-1].h) == (250, 20, 320, 320)
    assert tracker.summary()["found"] is True



# ---- quality gate ----

@pytest.mark.parametrize("defect", [None, "blur", "glare", "dark"])
def test_quality_gate_on_real_frames_degraded_on_purpose(sample_images, defect):
    """Every real frame passes as it is; each blurred or glare-spotted copy is flagged for that alone; each
    darkened copy is flagged dark (and may read as blurred: at a quarter of the exposure little detail stands
    above the noise)."""
    for i, (_, image) in enumerate(sample_images):
        frame = image if defect is None else degrade(image, defect, seed=i)
        quality = assess_quality(frame)
        if defect == "dark":
            assert quality.flags in (("dark",), ("blur", "dark")), (i, quality)
        else:
            assert quality.flags == (() if defect is None else (defect,)), (i, quality)
        assert quality.ok is (defect is None)


def test_quality_measures_against_hand_computed_cases():
    flat = np.full((100, 100, 3), 120, np.uint8)
    q = assess_quality(flat)
    assert q.sharpness == 0.0 and q.glare_fraction == 0.0 and q.brightness == pytest.approx(120)
    assert q.flags == ("blur",)
    # the measured centre is rows/cols 20..80; a white top half of it is half glare
    img = np.zeros((100, 100, 3), np.uint8)
    img[::2, :] = (60, 90, 150)  # stripes: plenty of fine detail
    img[20:50, 20:80] = 255
    q = assess_quality(img)
    assert q.glare_fraction == pytest.approx(0.5)
    assert q.flags == ("glare",)
    green = img[20:80, 20:80, 1].astype(np.float64)
    lap = (np.roll(green, 1, 0) + np.roll(green, -1, 0) + np.roll(green, 1, 1) + np.roll(green, -1, 1) - 4 * green)
    # reflected borders: compare on the inner part, where both are the plain 4-neighbour Laplacian
    assert q.sharpness == pytest.approx((lap[1:-1, 1:-1].var() - 10) / green.var(), rel=0.1)
    dim = assess_quality((img // 4 * (img < 255)).astype(np.uint8))  # a quarter exposure, glare gone
    assert dim.flags == ("dark",) and dim.brightness == pytest.approx((img // 4 * (img < 255))[20:80, 20:80].mean())
    strict = QualityThresholds(min_brightness=200)
    assert "dark" in assess_quality(np.full((64, 64, 3), (90, 150, 200), np.uint8), strict).flags
    with pytest.raises(InvalidInputError, match="8x8"):
        assess_quality(np.zeros((4, 4, 3), np.uint8))


# ---- layouts ----

def test_parse_layout():
    assert parse_layout("single") == Layout("single")
    assert parse_layout("side-by-side") == Layout("side-by-side")
    assert parse_layout("Side-By-Side:NBI-left") == Layout("side-by-side", "left")
    assert parse_layout("side-by-side:nbi-right").spec() == "side-by-side:nbi-right"
    for bad in ("twin", "side-by-side:left", ""):
        with pytest.raises(InvalidOptionError, match="--layout must be one of single, side-by-side"):
            parse_layout(bad)


def test_split_side_by_side_reads_which_half_is_nbi(sample_images):
    (_, wli), (_, nbi) = sample_images[0], sample_images[1]
    wli, nbi = (cv2.resize(im, (160, 180)) for im in (wli, nbi))
    for left, right, side in ((wli, nbi, "right"), (nbi, wli, "left")):
        frame = np.hstack([left, right])
        for layout in (Layout("side-by-side"), Layout("side-by-side", side)):
            got_wli, got_nbi = split_side_by_side(frame, layout)
            assert (got_wli == wli).all() and (got_nbi == nbi).all()
            assert np.shares_memory(got_wli, frame)
        # the given side wins over the colours
        other = "left" if side == "right" else "right"
        got_wli, got_nbi = split_side_by_side(frame, Layout("side-by-side", other))
        assert (got_wli == nbi).all() and (got_nbi == wli).all()
    with pytest.raises(InvalidInputError, match="cannot tell which half is NBI.*side-by-side:nbi-left"):
        split_side_by_side(np.hstack([wli, wli]), Layout("side-by-side"))
    with pytest.raises(InvalidOptionError, match="side-by-side layout"):
        split_side_by_side(np.hstack([wli, nbi]), Layout("single"))


def test_a_given_box_is_checked_against_each_new_frame_size():
    tracker = ContentAreaTracker("10,10,100,100")
    assert tracker.update(np.zeros((200, 300, 3), np.uint8)) == ContentArea(10, 10, 100, 100)
    with pytest.raises(InvalidInputError, match="outside the 90x80 frame \\(frame 2\\)"):
        tracker.update(np.zeros((80, 90, 3), np.uint8))
