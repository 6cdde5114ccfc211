"""segment_pair, postprocess and the overlay drawing, against plain numpy/torch/scipy references."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from endofuse.kernels.mask_overlay import foreground_mask_cpu, paint
from endofuse.model.synthetic import SyntheticScene
from endofuse.realtime import FUSED, WLI_ONLY, OverlayStyle, segment_pair
from endofuse.realtime.output.overlay import HudInfo, draw_hud, hud_rectangle

from conftest import ColourThresholdEngine

COLOR = (0, 255, 0)


def reference_mask(wli_bgr: np.ndarray, input_size, threshold: float) -> np.ndarray:
    """What ColourThresholdEngine + postprocess must give, computed with torch's bilinear resize.

    The frame is resized in float from its uint8 bytes (no rounding back to uint8), then scaled to [0, 1].
    """
    rgb = torch.from_numpy(wli_bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].double()
    small = F.interpolate(rgb, size=input_size, mode="bilinear", align_corners=False) / 255
    margin = small[:, :1] - threshold
    native = F.interpolate(margin, size=wli_bgr.shape[:2], mode="bilinear", align_corners=False)
    return (native[0, 0] > 0).numpy().astype(np.uint8)


def reference_contour(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a background pixel within Chebyshev distance 2 (outside the frame is not background)."""
    background = np.pad(mask == 0, 2, constant_values=False)
    near = ndimage.maximum_filter(background.astype(np.uint8), size=5)[2:-2, 2:-2]
    return (mask == 1) & (near == 1)


@pytest.fixture(scope="module")
def scene_pair():
    wli, nbi, _ = SyntheticScene(3, size=(301, 457), nbi_size=(280, 400)).frame(2.0)
    return wli, nbi


def test_blend_matches_the_formula_and_leaves_the_rest(scene_pair):
    wli, _ = scene_pair
    mask = np.zeros(wli.shape[:2], np.uint8)
    mask[40:200, 100:350] = 1
    mask[250, 5] = 1
    out = paint(wli, mask, 0.3, COLOR, contour=False)
    expected = wli.astype(np.float64) * 0.7 + np.array(COLOR, np.float64) * 0.3
    inside = mask.astype(bool)
    assert np.abs(out[inside].astype(np.int16) - np.round(expected[inside])).max() <= 1
    np.testing.assert_array_equal(out[~inside], wli[~inside])


def test_contour_is_the_inner_two_pixel_band_in_full_colour(scene_pair):
    wli, _ = scene_pair
    mask = np.zeros(wli.shape[:2], np.uint8)
    mask[60:150, 80:300] = 1
    mask[0:30, 400:457] = 1  # touches the frame edge: the edge is not a boundary
    out = paint(wli, mask, 0.45, COLOR)
    contour = reference_contour(mask)
    assert (out[contour] == COLOR).all()
    interior = mask.astype(bool) & ~contour
    assert not (out[interior] == COLOR).all(axis=1).all()  # the interior is blended, not painted
    np.testing.assert_array_equal(out[mask == 0], wli[mask == 0])


def test_preprocess_resizes_the_whole_frame_to_rgb_nchw_in_unit_range(scene_pair):
    from endofuse.realtime.segment import preprocess

    wli, _ = scene_pair
    x = preprocess(wli, (48, 64))
    assert x.shape == (1, 3, 48, 64) and x.dtype == np.float32
    rgb = torch.from_numpy(wli[:, :, ::-1].copy()).permute(2, 0, 1)[None].float()
    expected = F.interpolate(rgb, size=(48, 64), mode="bilinear", align_corners=False) / 255
    assert np.abs(x - expected.numpy()).max() <= 1 / 255  # uint8 fixed-point resize, as in training
    assert x[0, :, 0, 0].max() == 0  # the black octagon corner is kept, not cropped away


@pytest.mark.parametrize("classes", [2, 3])
def test_postprocess_is_argmax_of_bilinear_logits(classes):
    rng = np.random.default_rng(classes)
    logits = rng.normal(size=(1, classes, 17, 23)).astype(np.float32)
    mask = foreground_mask_cpu(logits[0], 101, 77)
    up = F.interpolate(torch.from_numpy(logits), size=(101, 77), mode="bilinear", align_corners=False)
    expected = (up.argmax(1)[0] != 0).numpy().astype(np.uint8)
    assert mask.shape == (101, 77) and mask.dtype == np.uint8
    assert (mask != expected).mean() < 1e-3  # only exact ties may differ


def test_segment_pair_fused_mask_and_overlay(scene_pair):
    wli, nbi = scene_pair
    engine = ColourThresholdEngine((48, 64), threshold=0.6)
    result = segment_pair(engine, wli, nbi, style=OverlayStyle(alpha=0.45, hud=False))
    assert result.mode == FUSED and engine.calls == [True]
    assert result.mask.shape == wli.shape[:2] and result.overlay.shape == wli.shape
    expected = reference_mask(wli, (48, 64), 0.6)
    assert 0.01 < expected.mean() < 0.99, "the test scene must give a non-trivial mask"
    assert (result.mask != expected).mean() < 1e-3
    changed = (result.overlay != wli).any(axis=2)
    # Blending cannot change a pixel that already has the overlay colour; none has here.
    np.testing.assert_array_equal(changed, result.mask.astype(bool))
    assert set(result.timings_ms) == {"preprocess", "infer", "postprocess", "overlay", "total"}
    parts = sum(v for k, v in result.timings_ms.items() if k != "total")
    assert parts <= result.timings_ms["total"] + 1e-6


def test_segment_pair_without_nbi_takes_the_missing_modality_path(scene_pair):
    wli, _ = scene_pair
    engine = ColourThresholdEngine((32, 32))
    result = segment_pair(engine, wli, None)
    assert result.mode == WLI_ONLY and engine.calls == [False]


def test_hud_draws_only_inside_its_box(scene_pair):
    wli, _ = scene_pair
    engine = ColourThresholdEngine((32, 32), threshold=2.0)  # empty mask: only the HUD can change pixels
    result = segment_pair(engine, wli, None, alpha=0.5)
    assert result.mask.sum() == 0
    info = HudInfo(WLI_ONLY, engine.name, engine.model_label, latency_ms=1.0)
    x0, y0, x1, y1 = hud_rectangle(wli.shape, info.lines())
    changed = (result.overlay != wli).any(axis=2)
    assert changed[y0:y1, x0:x1].any()
    changed[y0:y1, x0:x1] = False
    assert not changed.any()
    canvas = wli.copy()
    assert draw_hud(canvas, info) == (x0, y0, x1, y1)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((20, 20), np.uint8), "WLI frame must be an HxWx3 uint8"),
    (np.zeros((20, 20, 3), np.float32), "WLI frame must be an HxWx3 uint8"),
])
def test_bad_frames_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        segment_pair(ColourThresholdEngine(), bad, None)


def test_bad_nbi_frame_is_named(scene_pair):
    wli, _ = scene_pair
    with pytest.raises(ValueError, match="NBI frame"):
        segment_pair(ColourThresholdEngine(), wli, np.zeros((4, 4, 4), np.uint8))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    return 2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum())


def test_segment_pair_with_the_demo_model_finds_the_synthetic_lesion():
    """End to end with real weights: preprocessing must match training for the lesion to be found."""
    from endofuse.errors import EndofuseError
    from endofuse.realtime.engines import open_engine

    try:
        engine = open_engine(None, backend="torch")
    except EndofuseError as exc:
        pytest.skip(f"demo weights not available: {exc}")
    assert "demo" in engine.model_label
    for seed in (11, 12):
        wli, nbi, truth = SyntheticScene(seed, (480, 540)).frame(3.0)
        fused, alone = segment_pair(engine, wli, nbi), segment_pair(engine, wli, None)
        assert (fused.mode, alone.mode) == (FUSED, WLI_ONLY)
        assert fused.mask.shape == truth.shape and set(np.unique(fused.mask)) <= {0, 1}
        assert dice(fused.mask, truth) > 0.8, seed
    swapped = segment_pair(engine, wli[:, :, ::-1].copy(), nbi[:, :, ::-1].copy())  # RGB given as BGR
    assert dice(swapped.mask, truth) < 0.5


@pytest.fixture(scope="module")
def tiny_model():
    from endofuse.model import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


needs_compiled_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs CUDA and compiled Triton kernels (conftest sets TRITON_INTERPRET=1; run with TRITON_INTERPRET=0)",
)


@needs_compiled_cuda
def test_cuda_path_matches_the_cpu_path(tiny_model, scene_pair):
    import copy

    from endofuse.realtime.engines.torch_engine import TorchEngine

    wli, nbi = scene_pair
    cpu = TorchEngine(copy.deepcopy(tiny_model), model_label="tiny (random)", device="cpu")
    gpu = TorchEngine(copy.deepcopy(tiny_model), model_label="tiny (random)", device="cuda")
    style = OverlayStyle(alpha=0.45, hud=False)
    on_cpu, on_gpu = segment_pair(cpu, wli, nbi, style=style), segment_pair(gpu, wli, nbi, style=style)
    assert isinstance(on_gpu.mask, np.ndarray) and on_gpu.mask.shape == wli.shape[:2]
    assert (on_gpu.mask != on_cpu.mask).mean() < 2e-3  # float rounding at the class boundary only
    agree = on_gpu.mask == on_cpu.mask
    diff = np.abs(on_gpu.overlay.astype(int) - on_cpu.overlay.astype(int)).max(axis=2)
    near_edge = ndimage.binary_dilation(~agree, iterations=3)  # contours move with the mask
    assert diff[~near_edge].max() <= 1


@needs_compiled_cuda
def test_pipeline_runs_on_cuda(tiny_model):
    from endofuse.realtime import build_pipeline
    from endofuse.realtime.engines.torch_engine import TorchEngine

    engine = TorchEngine(tiny_model, model_label="tiny (random)", device="cuda")
    pipeline = build_pipeline("synthetic", "synthetic", engine, frames=40, warmup_frames=5)
    results = list(pipeline)
    assert len(results) == 40 and all(r.mode == FUSED for r in results)
    assert results[-1].overlay.shape == (480, 540, 3)
    assert pipeline.report()["paired"] == 40
