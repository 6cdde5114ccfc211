"""Segmentation metrics (the one Dice): the reference's definitions and honest native-resolution ones.

Per image, on binary masks P (prediction) and G (ground truth):
  Dice = (2|P∩G| + 1e-4) / (|P| + |G| + 1e-4)
  IoU  = (|P∩G| + 1e-6) / (|P∪G| + 1e-6)
  sensitivity = TP / (TP + FN), specificity = TN / (TN + FP), 0 when undefined
  HD95 = 95th percentile of the symmetric boundary-to-boundary distances (pixels),
         undefined when P or G is empty.
"reference" summary (the reference code, at 224x224): plain means, undefined HD95
counted as 0 (which biases it low). "native" summary: the same at the WLI frame's
native size, HD95 averaged only over images where both masks are non-empty, with
the number of excluded images reported.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

REFERENCE_SIZE = 224
METRIC_NAMES = ("dice", "iou", "sensitivity", "specificity", "hd95")


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def overlap_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity of two binary masks of one shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    p, g = pred.astype(bool), gt.astype(bool)
    tp = float(np.count_nonzero(p & g))
    fp = float(np.count_nonzero(p & ~g))
    fn = float(np.count_nonzero(~p & g))
    tn = float(p.size) - tp - fp - fn
    return {
        "dice": (2 * tp + 1e-4) / (2 * tp + fp + fn + 1e-4),
        "iou": (tp + 1e-6) / (tp + fp + fn + 1e-6),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-connected background neighbour (the image edge counts as background)."""
    m = mask.astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    eroded = cv2.erode(m, cross, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (eroded == 0)


def _distances_to(target_boundary: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Euclidean distance from each `at` pixel to the nearest `target_boundary` pixel."""
    # cv2.distanceTransform measures distance to the nearest zero pixel.
    field = cv2.distanceTransform((~target_boundary).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return field[at]


def hd95(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """95th percentile Hausdorff distance in pixels; None when either mask is empty."""
    if not pred.any() or not gt.any():
        return None
    bp, bg = boundary(pred), boundary(gt)
    distances = np.concatenate([_distances_to(bg, bp), _distances_to(bp, bg)])
    return float(np.percentile(distances, 95))


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float | None]:
    return {**overlap_metrics(pred, gt), "hd95": hd95(pred, gt)}


def resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)


def summarize_reference(per_image: Sequence[dict]) -> dict[str, float]:
    """Plain means over images; an undefined HD95 counts as 0 as in the reference code."""
    if not per_image:
        raise ValueError("no images to summarize")
    out = {k: float(np.mean([m[k] for m in per_image])) for k in METRIC_NAMES[:4]}
    out["hd95"] = float(np.mean([m["hd95"] or 0.0 for m in per_image]))
    return out


def summarize_native(per_image: Sequence[dict]) -> dict[str, float | int | None]:
    """Means over images; HD95 only over images where it is defined, plus the excluded count."""
    if not per_image:
        raise ValueError("no images to summarize")
    out: dict = {k: float(np.mean([m[k] for m in per_image])) for k in METRIC_NAMES[:4]}
    defined = [m["hd95"] for m in per_image if m["hd95"] is not None]
    out["hd95"] = float(np.mean(defined)) if defined else None
    out["hd95_excluded"] = len(per_image) - len(defined)
    return out


def format_table(summaries: dict[str, dict]) -> str:
    """A fixed-width table of summaries (rows) by metric (columns)."""
    header = f"{'':<10}" + "".join(f"{name:>13}" for name in METRIC_NAMES)
    lines = [header]
    for row, values in summaries.items():
        cells = []
        for name in METRIC_NAMES:
            v = values.get(name)
            cells.append(f"{'n/a':>13}" if v is None else f"{v:>13.4f}")
        lines.append(f"{row:<10}" + "".join(cells))
    return "\n".join(lines)
