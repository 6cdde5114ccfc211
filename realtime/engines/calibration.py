"""Frame pairs for INT8 calibration and for scoring engines: a dataset folder, or synthetic pairs.

A dataset folder is in the reference CSV format (`Training.csv`/`Train.csv`/
`Test.csv`, header `wli_path,nbi_path,label_path`, paths relative to the
folder, UTF-8 or GBK). LOCAL FALLBACK: `endofuse.train.data` reads the same
format fully, but `realtime` must not import `train`; this is the minimum the
engines need (frames and masks), until that reader moves under `endofuse.model`.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from endofuse.errors import EndofuseError

CALIBRATION_CSVS = ("Training.csv", "Train.csv", "Test.csv")
VALIDATION_CSVS = ("Test.csv", "Training.csv", "Train.csv")
SYNTHETIC_VALIDATION_SEED = 10_000  # validation pairs never overlap the calibration seeds 0..N


@dataclass
class FramePair:
    wli: np.ndarray  # BGR uint8 HxWx3
    nbi: np.ndarray  # BGR uint8, its own size
    mask: np.ndarray | None  # uint8 {0, 1} at the WLI frame's size
    source: str


def _imread(path: Path, flags: int) -> np.ndarray:
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else np.empty(0, np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise EndofuseError(f"cannot read image {path} (missing, corrupt or not an image)")
    return image


def _csv_rows(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "gbk"):
        try:
            return list(csv.reader(io.StringIO(raw.decode(encoding))))[1:]
        except UnicodeDecodeError:
            continue
    raise EndofuseError(f"{path}: not UTF-8 or GBK text")


def dataset_pairs(folder: str | Path, limit: int | None = None, csv_names=CALIBRATION_CSVS) -> list[FramePair]:
    """Up to `limit` pairs from the first CSV of `csv_names` found in `folder`."""
    folder = Path(folder)
    csv_path = next((folder / n for n in csv_names if (folder / n).is_file()), None)
    if csv_path is None:
        raise FileNotFoundError(f"{folder}: no {' / '.join(csv_names)} (expected a dataset folder in the reference format)")
    pairs = []
    for row_number, cells in enumerate(_csv_rows(csv_path), start=1):
        if limit is not None and len(pairs) >= limit:
            break
        if len(cells) < 2 or not all(c.strip() for c in cells[:2]):
            raise EndofuseError(f"{csv_path.name} row {row_number}: expected wli_path,nbi_path[,label_path], got {cells!r}")
        wli_path, nbi_path = (folder / c.strip().replace("\\", "/") for c in cells[:2])
        wli, nbi = _imread(wli_path, cv2.IMREAD_COLOR), _imread(nbi_path, cv2.IMREAD_COLOR)
        mask = None
        if len(cells) > 2 and cells[2].strip():
            grey = _imread(folder / cells[2].strip().replace("\\", "/"), cv2.IMREAD_UNCHANGED)
            mask = ((grey[..., :3].max(axis=2) if grey.ndim == 3 else grey) > 127).astype(np.uint8)
        pairs.append(FramePair(wli, nbi, mask, f"{csv_path.name} row {row_number}"))
    if not pairs:
        raise EndofuseError(f"{csv_path}: no data rows")
    return pairs


def synthetic_pairs(count: int, first_seed: int = 0) -> list[FramePair]:
    """`count` independent synthetic still pairs (seeds first_seed, first_seed + 1, ...)."""
    from endofuse.model.synthetic import make_pair

    return [FramePair(*make_pair(seed), source=f"synthetic seed {seed}") for seed in range(first_seed, first_seed + count)]


def calibration_pairs(folder: str | Path | None, count: int) -> list[FramePair]:
    """Calibration frames: from `folder` when given, else synthetic."""
    return dataset_pairs(folder, count, CALIBRATION_CSVS) if folder else synthetic_pairs(count)


def validation_pairs(folder: str | Path | None, count: int) -> list[FramePair]:
    """Scoring frames with masks: the dataset's Test.csv when given, else synthetic seeds apart from calibration."""
    return dataset_pairs(folder, count, VALIDATION_CSVS) if folder else synthetic_pairs(count, SYNTHETIC_VALIDATION_SEED)


def preprocess_pair(pair: FramePair, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(wli, nbi) as (1, 3, H, W) float32 RGB [0, 1] batches at the model's size."""
    from endofuse.kernels import preprocess

    return preprocess([pair.wli], size).numpy(), preprocess([pair.nbi], size).numpy()
