"""Classification folders: `cls_train.csv`, `cls_test.csv` with `image_path,label[,caption]`.

Columns are found by name in the header (caption optional), paths are relative to
the folder, files may be UTF-8 or GBK, like the segmentation CSVs; the whole CSV
is validated before anything runs and every bad row is reported in one error.
An image listed twice in one CSV (also through another spelling of its path or
a link) is a bad row: a duplicate would retrieve itself and be indexed twice.
Rows without a caption get one of the class's prompt templates.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from endofuse.errors import EndofuseError, InvalidOptionError, MissingFileError
from endofuse.kernels import preprocess
from endofuse.model.dataset import decode_csv_text, image_size, read_image, resolve_path

CLS_CSV = {"train": "cls_train.csv", "test": "cls_test.csv"}
REQUIRED = ("image_path", "label")


@dataclass(frozen=True)
class ImageRecord:
    row: int  # 1-based data row
    line: int  # 1-based line of the CSV file
    csv_path: Path
    image: Path
    label: str
    caption: str  # "" when the row has none

    @property
    def where(self) -> str:
        return f"{self.csv_path.name} row {self.row} (line {self.line})"


def classify_csv_path(root: Path, split: str) -> Path:
    if split not in CLS_CSV:
        raise InvalidOptionError(f"split must be one of {list(CLS_CSV)}, got {split!r}")
    return Path(root) / CLS_CSV[split]


def read_classify_csv(path: Path) -> tuple[list[ImageRecord], list[str]]:
    """Parse one CSV; returns (records, problems) with one problem per malformed row."""
    path = Path(path)
    rows = list(csv.reader(io.StringIO(decode_csv_text(path))))
    if not rows:
        raise EndofuseError(f"{path}: empty CSV (expected the header image_path,label,caption)")
    header = [h.strip().lower() for h in rows[0]]
    absent = [c for c in REQUIRED if c not in header]
    if absent:
        raise EndofuseError(f"{path}: header {rows[0]!r} lacks {', '.join(absent)} (expected image_path,label,caption)")
    col = {name: header.index(name) for name in (*REQUIRED, "caption") if name in header}
    records, problems, data_row = [], [], 0
    for line, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        data_row += 1
        image, label, text = (_cell(cells, col.get(name)) for name in ("image_path", "label", "caption"))
        if not image or not label:
            problems.append(f"{path.name} row {data_row} (line {line}): needs image_path and label, got {cells!r}")
            continue
        records.append(ImageRecord(data_row, line, path, resolve_path(path.parent, image), label, text))
    return records, problems


def _cell(cells: list[str], i: int | None) -> str:
    return cells[i].strip() if i is not None and i < len(cells) else ""


def record_problems(record: ImageRecord) -> list[str]:
    if not record.image.is_file():
        return [f"{record.where}: image file missing: {record.image}"]
    try:
        image_size(record.image)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        return [f"{record.where}: image unreadable: {record.image} ({type(exc).__name__}: {exc})"]
    return []


def load_classify_split(root: Path, split: str, classes: Sequence[str] | None = None) -> list[ImageRecord]:
    """Read and validate a split; labels outside `classes` (when given) are bad rows too."""
    path = classify_csv_path(root, split)
    if not path.is_file():
        raise MissingFileError(f"{root}: no {path.name} (classification folders hold cls_train.csv and cls_test.csv "
                                f"with image_path,label,caption; `endofuse synth OUT --pairs N --classes` writes one)")
    records, problems = read_classify_csv(path)
    known = set(classes) if classes is not None else None
    first_row: dict[tuple[int, int], ImageRecord] = {}  # (device, inode): another spelling or link is the same file
    for record in records:
        found = record_problems(record)
        problems.extend(found)
        if known is not None and record.label not in known:
            problems.append(f"{record.where}: label {record.label!r} is not one of the trained classes {sorted(known)}")
        if found:
            continue
        stat = record.image.stat()
        first = first_row.setdefault((stat.st_dev, stat.st_ino), record)
        if first is not record:  # a duplicate would find itself in retrieval and be indexed twice: refused
            problems.append(f"{record.where}: the same image as row {first.row} ({record.image}); "
                            "list each image once")
    if problems:
        raise EndofuseError(f"{path}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems))
    if not records:
        raise EndofuseError(f"{path}: no data rows")
    return records


def class_names(records: Sequence[ImageRecord]) -> list[str]:
    """Sorted distinct labels; at least two are needed to train a classifier."""
    names = sorted({r.label for r in records})
    if len(names) < 2:
        raise EndofuseError(f"{records[0].csv_path}: only {len(names)} distinct label(s) {names}; need at least 2")
    return names


class ImageDataset(torch.utils.data.Dataset):
    """Items: `image` (RGB float32 [0,1] 3xSxS), `label` (int), `caption` (str), `index`.

    Training (`augment=True`) flips horizontally at random and draws a prompt
    template for caption-less rows, from (seed, epoch, index) so a resumed run
    repeats them.
    """

    def __init__(self, records: Sequence[ImageRecord], img_size: int, classes: Sequence[str],
                 prompts: dict[str, list[str]], augment: bool = False, seed: int = 0):
        self.records = list(records)
        self.size = (int(img_size), int(img_size))
        self.index = {c: i for i, c in enumerate(classes)}
        self.prompts, self.augment, self.seed, self.epoch = prompts, augment, seed, 0
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int) -> torch.Tensor:
        """The image as the model's (3, S, S) RGB [0, 1] input (`endofuse.kernels.preprocess`)."""
        if index not in self._cache:
            self._cache[index] = preprocess(read_image(self.records[index].image), self.size)[0]
        return self._cache[index]

    def caption(self, index: int, rng: np.random.Generator | None = None) -> str:
        r = self.records[index]
        if r.caption:
            return r.caption
        options = self.prompts[r.label]
        return options[int(rng.integers(len(options)))] if rng is not None else options[0]

    def __getitem__(self, index: int) -> dict:
        image = self.load(index)
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.augment else None
        if rng is not None and rng.random() < 0.5:
            image = image.flip(-1)
        return {"image": image, "label": self.index[self.records[index].label],
                "caption": self.caption(index, rng), "index": index}


def image_tensor(path: Path, img_size: int) -> torch.Tensor:
    """One image file as the model's (1, 3, S, S) input, preprocessed exactly as the datasets do."""
    return preprocess(read_image(Path(path)), (int(img_size), int(img_size)))
