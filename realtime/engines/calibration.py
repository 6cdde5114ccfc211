"""Frame pairs for INT8 calibration and for scoring engines: a dataset folder, or synthetic pairs.

A dataset folder is read by `endofuse.model.dataset` (the reference CSV format,
the same reader training and evaluation use); frames become model inputs
through `endofuse.kernels.preprocess`, as on the live path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from endofuse.errors import MissingFileError
from endofuse.model.dataset import TEST_CSV_NAME, TRAIN_CSV_NAMES, load_split, read_image, read_mask, split_csv_path

CALIBRATION_SPLITS = ("train", "test")
VALIDATION_SPLITS = ("test", "train")
SYNTHETIC_VALIDATION_SEED = 10_000  # validation pairs never overlap the calibration seeds 0..N


@dataclass
class FramePair:
    wli: np.ndarray  # BGR uint8 HxWx3
    nbi: np.ndarray  # BGR uint8, its own size
    mask: np.ndarray | None  # uint8 {0, 1} at the WLI frame's size
    source: str


def dataset_pairs(folder: str | Path, limit: int | None = None, splits=CALIBRATION_SPLITS) -> list[FramePair]:
    """Up to `limit` pairs from the first split of `splits` whose CSV is in `folder`.

    Rows are read as they are needed (a calibration set need not check every
    file of a large dataset first); a row that cannot be read raises naming it.
    """
    folder = Path(folder)
    split = next((s for s in splits if split_csv_path(folder, s) is not None), None)
    if split is None:
        names = " / ".join(TRAIN_CSV_NAMES + (TEST_CSV_NAME,))
        raise MissingFileError(f"{folder}: no {names} (expected a dataset folder in the reference format)")
    records = load_split(folder, split, validate=False)
    return [FramePair(read_image(r.wli), read_image(r.nbi), read_mask(r.label), r.where) for r in records[:limit]]


def synthetic_pairs(count: int, first_seed: int = 0) -> list[FramePair]:
    """`count` independent synthetic still pairs (seeds first_seed, first_seed + 1, ...)."""
    from endofuse.model.synthetic import make_pair

    seeds = range(first_seed, first_seed + count)
    return [FramePair(*make_pair(seed), source=f"synthetic seed {seed}") for seed in seeds]


def check_calibration_folder(folder: str | Path) -> None:
    """Refuse, before any export work, a `--calibration` that cannot give a single pair.

    A missing or empty folder, one without a split CSV, a CSV without rows, or a first row whose images
    cannot be read: each would otherwise fail only after the ONNX export (tens of seconds).
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "no such folder" if not folder.exists() else "not a folder"
        raise MissingFileError(f"--calibration '{folder}': {what}; give a dataset folder (reference CSV format) "
                               "or leave it out to calibrate on synthetic pairs")
    first = dataset_pairs(folder, 1, CALIBRATION_SPLITS)  # one line naming the folder, CSV or image at fault
    if not first:
        raise MissingFileError(f"--calibration '{folder}': its CSV lists no image pairs")


def calibration_pairs(folder: str | Path | None, count: int) -> list[FramePair]:
    """Calibration frames: from `folder` when given, else synthetic."""
    return dataset_pairs(folder, count, CALIBRATION_SPLITS) if folder else synthetic_pairs(count)


def validation_pairs(folder: str | Path | None, count: int) -> list[FramePair]:
    """Scoring frames with masks: the dataset's Test.csv when given, else synthetic seeds apart from calibration."""
    if folder:
        return dataset_pairs(folder, count, VALIDATION_SPLITS)
    return synthetic_pairs(count, SYNTHETIC_VALIDATION_SEED)


def preprocess_pair(pair: FramePair, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(wli, nbi) as (1, 3, H, W) float32 RGB [0, 1] batches at the model's size (the live path's preprocessing)."""
    from endofuse.kernels import preprocess

    return preprocess([pair.wli], size).numpy(), preprocess([pair.nbi], size).numpy()
