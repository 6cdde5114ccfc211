"""Score a model on a dataset split: reference metrics at 224 and native-resolution metrics.

Frames become model inputs through `endofuse.kernels.preprocess` and masks and
overlays come from `endofuse.kernels.overlay`: the functions the live path
calls, so the masks written here are bit for bit the ones `endofuse run` shows
for the same frames with the torch engine. "reference": logits upsampled
(bilinear) to 224x224 and compared with the mask resized nearest to 224, as the
reference code does. "native": the live mask at the WLI frame's own size,
compared with the full-size mask.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from endofuse.kernels import overlay, preprocess
from endofuse.model.dataset import PairRecord, read_image, read_mask
from endofuse.model.metrics import (
    REFERENCE_SIZE,
    format_table,
    image_metrics,
    resize_nearest,
    summarize_native,
    summarize_reference,
)
from endofuse.outputs import finite_or_none, write_image, write_json


@torch.no_grad()
def predict_logits(model: torch.nn.Module, wli_bgr: np.ndarray, nbi_bgr: np.ndarray | None) -> torch.Tensor:
    """(1, C, S, S) logits for one native-size pair; `nbi_bgr=None` takes the WLI-only path."""
    size = (model.img_size, model.img_size)
    wli = preprocess(wli_bgr, size)
    nbi = None if nbi_bgr is None else preprocess(nbi_bgr, size)
    return model(wli, nbi).float()


def reference_prediction(logits: torch.Tensor) -> np.ndarray:
    """Foreground mask at 224x224 (bilinear upsampling of the logits, then argmax)."""
    up = F.interpolate(logits, size=(REFERENCE_SIZE, REFERENCE_SIZE), mode="bilinear", align_corners=False)
    return (up.argmax(1)[0] != 0).numpy().astype(np.uint8)


def output_stems(records: Sequence[PairRecord]) -> list[str]:
    """File stems for the outputs: the WLI file's stem, made unique with the row when two collide."""
    stems = [r.wli.stem for r in records]
    return [s if stems.count(s) == 1 else f"{s}_row{r.row}" for s, r in zip(stems, records, strict=True)]


def write_json_atomic(path: Path, payload: dict) -> None:
    """Strict JSON (an undefined metric is null, never NaN), checked and atomic."""
    write_json(path, finite_or_none(payload))


def evaluate_model(model: torch.nn.Module, records: Sequence[PairRecord], out: Path | None = None,
                   wli_only: bool = False, progress: bool = True) -> dict:
    """Metrics dict {"reference", "native", "per_image"}; with `out`, also masks/ and overlays/ PNGs."""
    model.eval()
    if out is not None:
        (out / "masks").mkdir(parents=True, exist_ok=True)
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    per_image = []
    for record, stem in tqdm(list(zip(records, output_stems(records), strict=True)), desc="evaluate", unit="pair",
                             disable=not progress):
        wli = read_image(record.wli)
        nbi = None if wli_only else read_image(record.nbi)
        gt = read_mask(record.label)
        logits = predict_logits(model, wli, nbi)
        image, pred = overlay(wli, logits[0])  # the live overlay's default look, without the HUD
        ref = image_metrics(reference_prediction(logits), resize_nearest(gt, REFERENCE_SIZE))
        native = image_metrics(pred, gt)
        per_image.append({"row": record.row, "wli": str(record.wli), "stem": stem,
                          "reference": ref, "native": native})
        if out is not None:
            write_image(out / "masks" / f"{stem}.png", pred * np.uint8(255), durable=False)
            write_image(out / "overlays" / f"{stem}.png", image, durable=False)
    return {
        "reference": summarize_reference([p["reference"] for p in per_image]),
        "native": summarize_native([p["native"] for p in per_image]),
        "per_image": per_image,
        "nbi": not wli_only,
    }


def print_summary(metrics: dict) -> str:
    table = format_table({"reference": metrics["reference"], "native": metrics["native"]})
    excluded = metrics["native"]["hd95_excluded"]
    return (f"{table}\nreference: at {REFERENCE_SIZE}x{REFERENCE_SIZE}, HD95 = 0 where a mask is empty; "
            f"native: HD95 over {len(metrics['per_image']) - excluded} image(s), {excluded} excluded (empty mask)")
