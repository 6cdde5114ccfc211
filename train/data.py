"""The training dataset: rows of a reference-format CSV (`endofuse.model.dataset`) as model-ready tensors.

Frames go through `endofuse.kernels.preprocess`, the same function the live
path, evaluation and INT8 calibration use, so the network trains on exactly
the inputs it later sees; masks are resized with nearest neighbour.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from endofuse.errors import EndofuseError
from endofuse.kernels import preprocess
from endofuse.model.dataset import PairRecord, read_image, read_mask

# augment(wli, nbi, mask, rng) on HxWx3 float32 RGB [0, 1] frames and an HxW uint8 mask at model size
Augment = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], tuple]


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


class PairDataset(torch.utils.data.Dataset):
    """WLI/NBI/mask triples at `img_size`, cached in memory after the first read.

    Items are dicts: `wli`, `nbi` (RGB float32 [0,1] 3xSxS), `mask` (int64 SxS in {0,1}),
    `index`. `augment(wli, nbi, mask, rng)` runs on the preprocessed frames; its
    randomness comes from `seed`, the epoch (`set_epoch`) and the index, so a
    resumed run sees the same augmentations.
    """

    def __init__(self, records: Sequence[PairRecord], img_size: int, augment: Augment | None = None,
                 seed: int = 0, cache: bool = True):
        self.records = list(records)
        self.size = (int(img_size), int(img_size))
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, tuple[torch.Tensor, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        """((2, 3, S, S) preprocessed WLI and NBI, SxS uint8 mask) of one row."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        r = self.records[index]
        wli, nbi, mask = read_image(r.wli), read_image(r.nbi), read_mask(r.label)
        if mask.shape != wli.shape[:2]:
            raise EndofuseError(f"{r.where}: mask {r.label} is {mask.shape[1]}x{mask.shape[0]} "
                                f"but its WLI frame {r.wli} is {wli.shape[1]}x{wli.shape[0]}")
        item = (preprocess([wli, nbi], self.size), resize_mask(mask, self.size))
        if self._cache is not None:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict:
        frames, mask = self.load(index)
        wli, nbi = frames[0], frames[1]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            hwc = [np.ascontiguousarray(t.numpy().transpose(1, 2, 0)) for t in (wli, nbi)]
            wli, nbi, mask = self.augment(hwc[0], hwc[1], mask, rng)
            wli, nbi = (torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in (wli, nbi))
        return {"wli": wli, "nbi": nbi, "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(), "index": index}
