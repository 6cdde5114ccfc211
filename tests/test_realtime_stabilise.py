"""The stabiliser against a plain-numpy/Python reference on scripted probability sequences."""
from __future__ import annotations

import numpy as np
import pytest

from endofuse.errors import InvalidOptionError
from endofuse.realtime.output.stabilise import StabiliseConfig, Stabiliser, StabiliseStage, tumour_probability

H, W = 12, 16


def flood_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected regions of a boolean mask by breadth-first search (independent of OpenCV)."""
    seen = np.zeros(mask.shape, bool)
    regions = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, region = [(y0, x0)], []
        while queue:
            y, x = queue.pop()
            region.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        regions.append(region)
    return regions


def shift(image: np.ndarray, dx: int, dy: int, fill=None) -> np.ndarray:
    """out[y, x] = image[y + dy, x + dx]: the previous frame moved by an integer backward flow; the edge
    repeated (fill None) or filled."""
    h, w = image.shape
    out = np.empty_like(image)
    for y in range(h):
        for x in range(w):
            sy, sx = y + dy, x + dx
            if 0 <= sy < h and 0 <= sx < w:
                out[y, x] = image[sy, sx]
            else:
                out[y, x] = image[min(max(sy, 0), h - 1), min(max(sx, 0), w - 1)] if fill is None else fill
    return out


def reference(probs, on, off, min_frames, weight, mode="ema", motion=(0, 0)):
    """The stabiliser written out directly: EMA, per-pixel hysteresis, per-region persistence."""
    out, smoothed, present, age = [], None, None, None
    for prob in probs:
        if smoothed is None:
            smoothed, present, age = prob.astype(np.float64), np.zeros(prob.shape, bool), np.zeros(prob.shape, int)
        else:
            if mode == "flow":
                smoothed, present = shift(smoothed, *motion), shift(present, *motion, False)
                age = shift(age, *motion, 0)
            smoothed = weight * prob + (1 - weight) * smoothed
        present = np.where(present, smoothed > off, smoothed > on)
        new_age = np.zeros(prob.shape, int)
        for region in flood_regions(present):
            oldest = max(age[y, x] for y, x in region)
            for y, x in region:
                new_age[y, x] = min(oldest + 1, min_frames)
        age = new_age
        out.append(present & (age >= min_frames))
    return out


def run(probs, config, flows=None):
    stabiliser = Stabiliser(config)
    return [stabiliser.update(p, None if flows is None else flows[i]) for i, p in enumerate(probs)]


def blip_and_steady(frames: int = 10) -> list[np.ndarray]:
    """Region A steady from frame 0; region B (far from A) only on frames 3 and 4."""
    probs = []
    for t in range(frames):
        p = np.full((H, W), 0.05, np.float32)
        p[2:6, 2:6] = 0.9
        if t in (3, 4):
            p[7:10, 10:14] = 0.9
        probs.append(p)
    return probs


@pytest.mark.parametrize("min_frames", [1, 3, 5])
def test_min_frames_per_region_a_blip_is_never_shown_a_steady_region_appears_on_frame_n(min_frames):
    probs = blip_and_steady()
    shown = run(probs, StabiliseConfig("ema", 0.6, 0.4, min_frames, ema_weight=1.0))
    region_a = [bool(s[2:6, 2:6].all()) for s in shown]
    region_b = [bool(s[7:10, 10:14].any()) for s in shown]
    # frame N (1-based) is index N - 1: the region has then been present N frames
    assert region_a == [t >= min_frames - 1 for t in range(10)]
    assert region_b == ([t in (3, 4) for t in range(10)] if min_frames <= 2 else [False] * 10)
    for got, want in zip(shown, reference(probs, 0.6, 0.4, min_frames, 1.0), strict=True):
        np.testing.assert_array_equal(got, want)


def test_hysteresis_on_one_pixel_hand_computed():
    values = [0.3, 0.7, 0.5, 0.45, 0.35, 0.5, 0.65]
    probs = [np.full((H, W), v, np.float32) for v in values]
    shown = run(probs, StabiliseConfig("ema", 0.6, 0.4, 1, ema_weight=1.0))
    # on above 0.6; stays on while above 0.4; once off, 0.5 is not enough to come back
    assert [bool(s[0, 0]) for s in shown] == [False, True, True, True, False, False, True]


def test_ema_hand_computed():
    probs = [np.full((H, W), v, np.float32) for v in (1.0, 0.0, 0.0, 1.0)]
    stabiliser = Stabiliser(StabiliseConfig("ema", 0.6, 0.4, 1, ema_weight=0.25))
    smoothed = []
    for p in probs:
        stabiliser.update(p)
        smoothed.append(float(stabiliser.smoothed[0, 0]))
    assert smoothed == pytest.approx([1.0, 0.75, 0.5625, 0.671875])


@pytest.mark.parametrize("on,off,min_frames,weight", [(0.6, 0.4, 3, 0.5), (0.7, 0.3, 2, 0.3), (0.5, 0.5, 1, 1.0),
                                                      (0.55, 0.45, 4, 0.6)])
def test_ema_hysteresis_min_frames_match_the_reference_on_noisy_sequences(on, off, min_frames, weight):
    rng = np.random.default_rng(7)
    base = np.zeros((H, W), np.float32)
    base[3:8, 4:10] = 0.8
    probs = [np.clip(base + rng.normal(0, 0.25, (H, W)), 0, 1).astype(np.float32) for _ in range(25)]
    got = run(probs, StabiliseConfig("ema", on, off, min_frames, ema_weight=weight))
    for t, (g, want) in enumerate(zip(got, reference(probs, on, off, min_frames, weight), strict=True)):
        np.testing.assert_array_equal(g, want, err_msg=f"frame {t}")


def test_flow_mode_warps_the_previous_state_by_the_flow():
    # a blob moving 2 px right and 1 px down per frame; the backward flow is (-2, -1) everywhere
    rng = np.random.default_rng(3)
    probs = []
    for t in range(8):
        p = np.clip(rng.normal(0.1, 0.1, (H, W)), 0, 1).astype(np.float32)
        p[2 + t:5 + t, 1 + 2 * t:5 + 2 * t] = 0.95 if t != 4 else 0.2  # one frame the detector misses it
        probs.append(p[:H, :W])
    flows = [np.tile(np.float32([-2, -1]), (H, W, 1))] * len(probs)
    got = run(probs, StabiliseConfig("flow", 0.6, 0.4, 2, ema_weight=0.5), flows)
    want = reference(probs, 0.6, 0.4, 2, 0.5, mode="flow", motion=(-2, -1))
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(g, w, err_msg=f"frame {t}")
    assert got[4].any()  # the missed frame is bridged by the warped average


def test_off_passes_the_logits_through():
    logits = np.random.default_rng(0).normal(size=(1, 2, 8, 8)).astype(np.float32)
    stage = StabiliseStage(StabiliseConfig("off"), fps=30)
    drawn, flow = stage(logits, np.zeros((20, 24, 3), np.uint8))
    assert drawn is logits and flow is None


def test_display_logits_argmax_is_the_shown_mask():
    stabiliser = Stabiliser(StabiliseConfig("ema", 0.6, 0.4, 1))
    probs = blip_and_steady()
    for p in probs[:4]:
        shown = stabiliser.update(p)
    np.testing.assert_array_equal(stabiliser.display_logits().argmax(0) == 1, shown)


def test_tumour_probability_is_one_minus_softmax_background():
    logits = np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32)
    e = np.exp(logits.astype(np.float64))
    np.testing.assert_allclose(tumour_probability(logits), 1 - e[0] / e.sum(0), atol=1e-6)
    np.testing.assert_allclose(tumour_probability(logits[None, :2]), e[1] / (e[0] + e[1]), atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [({"mode": "median"}, "--stabilise"),
                                          ({"on_threshold": 0.3, "off_threshold": 0.5}, "--off-threshold"),
                                          ({"min_frames": 0}, "--min-frames"),
                                          ({"on_threshold": float("nan")}, "--on-threshold")])
def test_bad_settings_are_one_clear_error(kwargs, match):
    with pytest.raises(InvalidOptionError, match=match):
        StabiliseConfig(**kwargs)
