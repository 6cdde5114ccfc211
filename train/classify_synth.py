"""A synthetic classification folder (`cls_train.csv`, `cls_test.csv`) from the WLI/NBI generator.

Three classes, decided by the generator's own lesion mask: `normal` (a lesion-free
window cut from a frame twice the size, given the same octagonal endoscope
border), `small_lesion` (lesion < 9 % of the frame) and `large_lesion` (> 11 %).
Every scene gives one WLI and one NBI image with template captions. Classes
cycle scene by scene, so the splits are balanced; deterministic per seed.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from endofuse.errors import EndofuseError
from endofuse.model.synthetic import make_pair, octagon_mask
from endofuse.outputs import atomic_file, write_image

CLASSES = ("normal", "small_lesion", "large_lesion")
DESCRIPTIONS = {"normal": "normal mucosa without a lesion", "small_lesion": "a small lesion",
                "large_lesion": "a large lesion"}
SMALL_MAX, LARGE_MIN = 0.09, 0.11
MAX_TRIES = 200
SEED_BASE = 7_000_003  # keeps these scenes apart from the segmentation pairs of the same --seed


def caption(label: str, modality: str) -> str:
    article = "an" if modality == "NBI" else "a"
    return f"{article} {modality} endoscopy frame showing {DESCRIPTIONS[label]}"


def _normal_crop(seed: int, size: tuple[int, int]):
    """A lesion-free (wli, nbi) window of `size` from a frame twice as large, or None."""
    h, w = size
    wli, nbi, mask = make_pair(seed, (2 * h, 2 * w))
    fov = octagon_mask((2 * h, 2 * w))
    for y in range(0, h + 1, max(1, h // 4)):
        for x in range(0, w + 1, max(1, w // 4)):
            if mask[y:y + h, x:x + w].any() or fov[y:y + h, x:x + w].mean() < 0.97:
                continue
            border = octagon_mask(size)[..., None]
            # NBI is mis-registered by a few pixels only, so the same window is lesion-free there too
            return tuple(np.ascontiguousarray(f[y:y + h, x:x + w] * border) for f in (wli, nbi))
    return None


def scene_images(label: str, seed: int, size: tuple[int, int]):
    """(wli, nbi, used_seed) for the first seed from `seed` on whose scene fits `label`."""
    for attempt in range(MAX_TRIES):
        s = seed + attempt * 7919
        if label == "normal":
            crop = _normal_crop(s, size)
            if crop is not None:
                return crop[0], crop[1], s
            continue
        wli, nbi, mask = make_pair(s, size)
        share = float(mask.mean())
        if (label == "small_lesion" and 0.01 < share < SMALL_MAX) or (label == "large_lesion" and share > LARGE_MIN):
            return wli, nbi, s
    raise EndofuseError(f"synthetic generator found no {label} scene in {MAX_TRIES} tries at size {size}")


def check_scene_counts(train_scenes: int, test_scenes: int) -> None:
    """Enough scenes for every class in training and one test scene (checked before any file is written)."""
    if train_scenes < len(CLASSES) or test_scenes < 1:
        raise EndofuseError(f"--classes needs --pairs >= {len(CLASSES)} (one scene per class at least) "
                            f"and --test-pairs >= 1, got {train_scenes} and {test_scenes}")


def write_classification_dataset(out: Path, train_scenes: int, test_scenes: int, size: tuple[int, int],
                                 seed: int = 0) -> dict[str, int]:
    """Write `cls_imgs/` and the two CSVs; returns rows per CSV (2 images per scene).

    Every file is a checked atomic write: a full disk is one line naming the file.
    """
    check_scene_counts(train_scenes, test_scenes)
    out = Path(out)
    (out / "cls_imgs").mkdir(parents=True, exist_ok=True)
    counts = {}
    for csv_name, first, n in (("cls_train.csv", 0, train_scenes), ("cls_test.csv", train_scenes, test_scenes)):
        rows = []
        for i in range(first, first + n):
            label = CLASSES[i % len(CLASSES)]
            wli, nbi, _ = scene_images(label, SEED_BASE * (seed + 1) + i * 104729, size)
            for modality, image in (("WLI", wli), ("NBI", nbi)):
                name = f"cls_imgs/s{seed}_{i:05d}_{modality.lower()}.png"
                write_image(out / name, image, durable=False)
                rows.append((name, label, caption(label, modality)))
        with atomic_file(out / csv_name, "w", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image_path", "label", "caption"])
            writer.writerows(rows)
        counts[csv_name] = len(rows)
    return counts
