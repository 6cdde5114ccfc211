"""Flow warping on a translated synthetic frame; temporal metrics against hand-computed sequences."""
from __future__ import annotations

import math

import numpy as np
import pytest

from endofuse.model.synthetic import SyntheticScene
from endofuse.model.temporal import FlowEstimator, TemporalMetrics, flow_image, runs, warp_previous


def translated_pair(dx: int, dy: int):
    """A textured synthetic frame and the same frame moved by (dx, dy) pixels (numpy roll: the reference)."""
    wli, _, _ = SyntheticScene(seed=2, size=(96, 112)).frame(0.0)
    return wli, np.roll(wli, (dy, dx), axis=(0, 1))


@pytest.mark.parametrize("dx,dy", [(3, 2), (-4, 1)])
def test_flow_warp_moves_the_previous_frame_onto_a_translated_one(dx, dy):
    previous, current = translated_pair(dx, dy)
    estimator = FlowEstimator()
    assert estimator(flow_image(previous, (96, 112))) is None  # no previous frame yet
    flow = estimator(flow_image(current, (96, 112)))
    inner = (slice(12, -12), slice(12, -12))
    assert np.median(flow[inner][..., 0]) == pytest.approx(-dx, abs=0.3)
    assert np.median(flow[inner][..., 1]) == pytest.approx(-dy, abs=0.3)
    prev_grey, cur_grey = flow_image(previous, (96, 112)).astype(float), flow_image(current, (96, 112)).astype(float)
    warped = warp_previous(prev_grey.astype(np.float32), flow)
    before = np.abs(prev_grey - cur_grey)[inner].mean()
    after = np.abs(warped - cur_grey)[inner].mean()
    assert after < 0.25 * before


def test_warp_previous_rescales_a_low_resolution_flow():
    # a constant backward flow of (-1, 0) at 24x28 is (-4, 0) at 96x112: an integer shift of the mask
    mask = np.zeros((96, 112), bool)
    mask[30:50, 40:60] = True
    flow = np.tile(np.float32([-1, 0]), (24, 28, 1))
    warped = warp_previous(mask, flow, nearest=True, border_value=0)
    want = np.zeros_like(mask)
    want[30:50, 44:64] = True
    np.testing.assert_array_equal(warped, want)


def test_runs():
    assert runs([0, 1, 1, 0, 1, 0, 0, 1]) == [(1, 2), (4, 1), (7, 1)]
    assert runs([]) == []


def square(on: bool, x0: int = 2, size: int = 4) -> np.ndarray:
    m = np.zeros((10, 12), bool)
    if on:
        m[2:2 + size, x0:x0 + size] = True
    return m


def test_label_free_metrics_hand_computed():
    # shown pattern over 13 frames at 60 fps: on x3, off, on x1, off x2, on x6 (run cut by the end)
    pattern = [1, 1, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1]
    metrics = TemporalMetrics(fps=60.0)
    for on in pattern:
        metrics.add(square(bool(on)))
    s = metrics.summary()
    # 12 consecutive pairs: 8 equal (IoU 1; both empty counts as 1), 4 changes (IoU 0)
    assert s["consecutive_iou"] == pytest.approx(8 / 12, abs=1e-6)
    assert math.isnan(s["mtc"])  # no flow given
    assert s["toggles"] == 4
    assert s["toggles_per_min"] == pytest.approx(4 / (13 / 60 / 60))
    assert (s["shown_runs"], s["short_runs"], s["short_run_share"]) == (3, 2, pytest.approx(2 / 3))
    assert "dice" not in s


def test_mtc_uses_the_flow():
    # the square moves 2 px right each frame; with the true backward flow (-2, 0) the warped mask matches
    masks = [square(True, x0=2 + 2 * t) for t in range(4)]
    flow = np.tile(np.float32([-2, 0]), (10, 12, 1))
    with_flow, without = TemporalMetrics(30.0), TemporalMetrics(30.0)
    for m in masks:
        with_flow.add(m, flow)
        without.add(m, flow=None)
    assert with_flow.summary()["mtc"] == pytest.approx(1.0)
    # plain consecutive IoU of two 4x4 squares 2 px apart: 8 / 24
    assert with_flow.summary()["consecutive_iou"] == pytest.approx(8 / 24, abs=1e-6)
    assert math.isnan(without.summary()["mtc"])


def test_labelled_metrics_dice_false_runs_and_first_shown_delay():
    # label: lesion on frames 2..7; shown: a false blip on frame 0, the lesion from frame 4 on (delay 2 frames)
    labels = [square(2 <= t <= 7) for t in range(10)]
    shown = [square(True, x0=8, size=2) if t == 0 else square(4 <= t <= 8) for t in range(10)]
    metrics = TemporalMetrics(fps=25.0)
    for m, g in zip(shown, labels, strict=True):
        metrics.add(m, label=g)
    s = metrics.summary()
    # per-frame Dice: frame 0: empty label vs 4 px -> 1e-4 / (4 + 1e-4); frames 1, 9: both empty -> 1;
    # frames 2, 3: missed -> 1e-4 / (16 + 1e-4); 4..7: 1; frame 8: 1e-4 / (16 + 1e-4)
    dice = [1e-4 / 4.0001, 1, 1e-4 / 16.0001, 1e-4 / 16.0001, 1, 1, 1, 1, 1e-4 / 16.0001, 1]
    assert s["dice"] == pytest.approx(np.mean(dice))
    assert (s["false_runs"], s["short_false_runs"]) == (1, 1)
    assert (s["lesions"], s["lesions_missed"]) == (1, 0)
    assert s["first_shown_delay_frames"] == [2]
    assert s["first_shown_delay_ms"] == [pytest.approx(80.0)]
