"""Metrics against hand-computed cases and an independent scipy implementation."""
import json

import numpy as np
import pytest
from scipy import ndimage

from endofuse import cli
from endofuse.model import build_model, save_checkpoint
from endofuse.model.metrics import (
    hd95,
    image_metrics,
    overlap_metrics,
    summarize_native,
    summarize_reference,
)


def scipy_hd95(pred: np.ndarray, gt: np.ndarray) -> float:
    """medpy-style HD95: boundary = mask minus its 4-connected erosion; symmetric distances; 95th pct."""
    structure = ndimage.generate_binary_structure(2, 1)
    bp = pred.astype(bool) & ~ndimage.binary_erosion(pred.astype(bool), structure, border_value=0)
    bg = gt.astype(bool) & ~ndimage.binary_erosion(gt.astype(bool), structure, border_value=0)
    d_pg = ndimage.distance_transform_edt(~bg)[bp]
    d_gp = ndimage.distance_transform_edt(~bp)[bg]
    return float(np.percentile(np.hstack([d_pg, d_gp]), 95))


def random_blobs(rng, shape, count):
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=rng.uniform(2, 6))
    if not count:
        return np.zeros(shape, np.uint8)
    return (noise > np.quantile(noise, 1 - rng.uniform(0.05, 0.5))).astype(np.uint8)


def test_hand_computed_overlap_case():
    pred = np.zeros((10, 10), np.uint8)
    gt = np.zeros((10, 10), np.uint8)
    pred[0, 0:4] = 1  # 4 px
    gt[0, 2:8] = 1  # 6 px, overlap 2
    m = overlap_metrics(pred, gt)
    assert m["dice"] == pytest.approx((4 + 1e-4) / (10 + 1e-4))
    assert m["iou"] == pytest.approx((2 + 1e-6) / (8 + 1e-6))
    assert m["sensitivity"] == pytest.approx(2 / 6)
    assert m["specificity"] == pytest.approx(92 / 94)


def test_hand_computed_hd95_and_empty_cases():
    a = np.zeros((12, 12), np.uint8)
    b = np.zeros((12, 12), np.uint8)
    a[5, 5] = 1
    b[5, 9] = 1
    assert hd95(a, b) == pytest.approx(4.0)
    assert hd95(a, np.zeros_like(a)) is None and hd95(np.zeros_like(a), b) is None
    empty = overlap_metrics(np.zeros_like(a), np.zeros_like(a))
    assert empty["dice"] == pytest.approx(1.0) and empty["sensitivity"] == 0.0 and empty["specificity"] == 1.0


@pytest.mark.parametrize("seed", range(8))
def test_hd95_matches_scipy_distance_transforms(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
    pred, gt = random_blobs(rng, shape, 1), random_blobs(rng, shape, 1)
    assert hd95(pred, gt) == pytest.approx(scipy_hd95(pred, gt), abs=1e-4)


def test_summaries_reference_counts_empty_hd95_as_zero_native_excludes_it():
    per_image = [
        {"dice": 0.5, "iou": 0.3, "sensitivity": 1.0, "specificity": 0.5, "hd95": 6.0},
        {"dice": 0.9, "iou": 0.8, "sensitivity": 0.0, "specificity": 1.0, "hd95": None},
    ]
    ref = summarize_reference(per_image)
    nat = summarize_native(per_image)
    assert ref["hd95"] == pytest.approx(3.0) and ref["dice"] == pytest.approx(0.7)
    assert nat["hd95"] == pytest.approx(6.0) and nat["hd95_excluded"] == 1


def test_image_metrics_keys():
    m = image_metrics(np.ones((4, 4), np.uint8), np.ones((4, 4), np.uint8))
    assert set(m) == {"dice", "iou", "sensitivity", "specificity", "hd95"}


def test_evaluate_cli_writes_metrics_masks_overlays(tmp_path, capsys):
    import cv2

    data = tmp_path / "data"
    assert cli.main(["synth", str(data), "--pairs", "1", "--test-pairs", "2", "--size", "72x80", "--seed", "9"]) == 0
    model = build_model("tiny", img_size=32)
    save_checkpoint(tmp_path / "m.pt", model)
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--data", str(data), "--checkpoint", str(tmp_path / "m.pt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reference" in printed and "native" in printed and "hd95" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["native"]) == {"dice", "iou", "sensitivity", "specificity", "hd95", "hd95_excluded"}
    assert len(metrics["per_image"]) == 2
    # Recompute the native Dice of each image from the written mask PNG and the ground truth.
    from endofuse.model.dataset import load_split, read_mask

    for record, entry in zip(load_split(data, "test"), metrics["per_image"], strict=True):
        written = cv2.imread(str(out / "masks" / f"{record.wli.stem}.png"), cv2.IMREAD_GRAYSCALE)
        assert written.shape == (72, 80) and set(np.unique(written)) <= {0, 255}
        assert (out / "overlays" / f"{record.wli.stem}.png").is_file()
        gt = read_mask(record.label)
        p, g = written > 0, gt > 0
        dice = (2 * (p & g).sum() + 1e-4) / (p.sum() + g.sum() + 1e-4)
        assert entry["native"]["dice"] == pytest.approx(dice)
    mean_dice = np.mean([e["native"]["dice"] for e in metrics["per_image"]])
    assert metrics["native"]["dice"] == pytest.approx(mean_dice)
