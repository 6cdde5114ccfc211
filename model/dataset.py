"""Dataset folders in the reference CSV format: the one reader for training, evaluation and INT8 calibration.

A dataset folder holds `Training.csv` (or `Train.csv`) and `Test.csv` with a
header `wli_path,nbi_path,label_path`; columns are read by position, paths are
relative to the folder, files may be UTF-8 or GBK. `load_split` validates the
whole CSV first and reports every bad row at once. Frames are decoded as BGR
uint8 at their own size (WLI and NBI may differ); masks may be grey or RGB with
values {0, 255} and come back as uint8 {0, 1}.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from endofuse.errors import EndofuseError, InvalidOptionError, MissingFileError

TRAIN_CSV_NAMES = ("Training.csv", "Train.csv")
TEST_CSV_NAME = "Test.csv"
CSV_ENCODINGS = ("utf-8-sig", "gbk")
HEADER = ("wli_path", "nbi_path", "label_path")


@dataclass(frozen=True)
class PairRecord:
    """One CSV row: the three files of a WLI/NBI pair and where it came from."""

    row: int  # 1-based data row (the header is not counted)
    line: int  # 1-based line of the CSV file
    csv_path: Path
    wli: Path
    nbi: Path
    label: Path

    @property
    def where(self) -> str:
        return f"{self.csv_path.name} row {self.row} (line {self.line})"


def split_csv_path(root: Path, split: str) -> Path | None:
    """The CSV of a split ("train" or "test") in a dataset folder, or None when absent."""
    root = Path(root)
    if split == "train":
        names = TRAIN_CSV_NAMES
    elif split == "test":
        names = (TEST_CSV_NAME,)
    else:
        raise InvalidOptionError(f"split must be 'train' or 'test', got {split!r}")
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


def decode_csv_text(path: Path) -> str:
    """The CSV's text, trying UTF-8 (with or without BOM) then GBK."""
    raw = Path(path).read_bytes()
    for encoding in CSV_ENCODINGS:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise EndofuseError(f"{path}: not UTF-8 or GBK text")


def resolve_path(root: Path, cell: str) -> Path:
    """A CSV cell as a path: relative to the dataset folder; backslashes accepted (CSVs written on Windows)."""
    p = Path(cell.strip().replace("\\", "/"))
    return p if p.is_absolute() else root / p


def read_split_csv(path: Path) -> tuple[list[PairRecord], list[str]]:
    """Parse a split CSV into records; returns (records, problems) with one problem per malformed row."""
    path = Path(path)
    root = path.parent
    records, problems = [], []
    rows = list(csv.reader(io.StringIO(decode_csv_text(path))))
    if not rows:
        raise EndofuseError(f"{path}: empty CSV (expected the header {','.join(HEADER)})")
    data_row = 0
    for line, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        data_row += 1
        if len(cells) < 3 or not all(c.strip() for c in cells[:3]):
            problems.append(f"{path.name} row {data_row} (line {line}): expected 3 paths, got {cells!r}")
            continue
        records.append(PairRecord(data_row, line, path, *(resolve_path(root, c) for c in cells[:3])))
    return records, problems


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header, after checking the file's structure (no full decode)."""
    with Image.open(path) as im:
        size = (im.height, im.width)
        im.verify()  # PNG: walks every chunk and checks CRCs; catches truncation and corruption
    return size


def record_problems(record: PairRecord) -> list[str]:
    """Everything wrong with one row: missing files, unreadable images, mask size != WLI size."""
    problems, sizes = [], {}
    for role in ("wli", "nbi", "label"):
        p = getattr(record, role)
        if not p.is_file():
            problems.append(f"{record.where}: {role} file missing: {p}")
            continue
        try:
            sizes[role] = image_size(p)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
            problems.append(f"{record.where}: {role} image unreadable: {p} ({type(exc).__name__}: {exc})")
    if "wli" in sizes and "label" in sizes and sizes["wli"] != sizes["label"]:
        (wh, ww), (mh, mw) = sizes["wli"], sizes["label"]
        problems.append(f"{record.where}: mask {record.label} is {mw}x{mh} but its WLI frame {record.wli} is {ww}x{wh}")
    return problems


def load_split(root: Path, split: str, validate: bool = True) -> list[PairRecord]:
    """Read and (by default) validate a split; raises one EndofuseError listing every bad row."""
    path = split_csv_path(root, split)
    if path is None:
        wanted = " or ".join(TRAIN_CSV_NAMES) if split == "train" else TEST_CSV_NAME
        raise MissingFileError(f"{root}: no {wanted} (dataset folders use the reference CSV format)")
    records, problems = read_split_csv(path)
    if validate:
        for record in records:
            problems.extend(record_problems(record))
    if problems:
        raise EndofuseError(f"{path}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems))
    if not records:
        raise EndofuseError(f"{path}: no data rows")
    return records


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 HxWx3; raises EndofuseError naming the file when it cannot be decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # imdecode: safe with non-ASCII paths
    except OSError as exc:
        raise EndofuseError(f"cannot read image {path}: {exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise EndofuseError(f"cannot decode image {path} (corrupt or not an image)")
    return image


def read_mask(path: Path) -> np.ndarray:
    """A label image -> uint8 {0, 1} HxW, whatever its two-valued encoding (see `decode_mask`)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise EndofuseError(f"cannot read mask {path}: {exc}") from exc
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None:
        raise EndofuseError(f"cannot decode mask {path} (corrupt or not an image)")
    return decode_mask(mask, path)


def decode_mask(mask: np.ndarray, where: str | Path = "mask") -> np.ndarray:
    """Tumour = the brighter of exactly two values: 0/1, 0/255, 0/65535, any two grey levels, or black plus one
    colour (RGB palette masks); one value only is all-background if 0, else all-tumour. Alpha is ignored.

    More than two values (a JPEG-compressed or soft mask, a multi-class palette) is ambiguous: an
    EndofuseError naming the file, since thresholding it would silently change the labels.
    """
    colour = False
    if mask.ndim == 3:
        mask = mask[..., :3]
        if mask.shape[2] == 1 or ((mask[..., 0] == mask[..., 1]).all() and (mask[..., 1] == mask[..., 2]).all()):
            mask = mask[..., 0]
        else:  # a colour palette: one packed value per pixel
            colour = True
            mask = (mask[..., 0].astype(np.uint64) << 32) | (mask[..., 1].astype(np.uint64) << 16) | mask[..., 2]
    if mask.dtype == np.uint8:
        values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))  # fast path for 8-bit labels
    else:
        values = np.unique(mask)
    if len(values) > 2:
        shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise EndofuseError(f"mask {where}: {len(values)} distinct values ({shown}), expected two (background and "
                            "tumour, e.g. 0/1 or 0/255 or black/one colour); save it as a two-valued PNG")
    if colour and len(values) == 2 and values[0] != 0:
        raise EndofuseError(f"mask {where}: two colours and no black background; which one is tumour is ambiguous "
                            "(use black for background)")
    if len(values) == 1:
        return np.full(mask.shape, int(values[0] != 0), np.uint8)
    return (mask == values[1]).astype(np.uint8)


def holdout_split(records: Sequence[PairRecord], fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, val) split of one CSV's records; val gets at least one row."""
    if not 0 < fraction < 1:
        raise InvalidOptionError(f"validation fraction must be in (0, 1), got {fraction}")
    if len(records) < 2:
        where = records[0].csv_path if records else "dataset"
        raise EndofuseError(f"{where}: need at least 2 rows to hold out a validation split")
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = max(1, int(round(fraction * len(records))))
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [records[i] for i in train], [records[i] for i in val]
