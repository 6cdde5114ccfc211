"""Training recipes: optimiser, per-iteration LR schedule, augmentation, loss weights.

`paper` is the reference recipe (method file): SGD 0.01, momentum 0.9, weight
decay 1e-4, poly(0.9) decay every iteration, batch 24, no augmentation, seed
1234. `default` is ours: AdamW + cosine (with a short warm-up) + paired
augmentations. Both use the same losses:
    total = 0.5 CE + 0.5 Dice + w_fd(epoch) * fd + 1e-4 * da,  w_fd = min(0.05, 0.1 * epoch / epochs)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from endofuse.train.augment import PairAugment

DA_WEIGHT = 1e-4
ABLATIONS = ("da", "fd", "dacl", "nbi")


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str  # "sgd" | "adamw"
    lr: float
    weight_decay: float
    batch_size: int
    schedule: str  # "poly" | "cosine"
    augment: bool
    momentum: float = 0.9
    warmup_fraction: float = 0.0
    seed: int = 1234

    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)

    def lr_factor(self, total_steps: int) -> Callable[[int], float]:
        """Multiplier of the base LR at iteration `step` (0-based) of `total_steps`."""
        total = max(1, total_steps)
        if self.schedule == "poly":
            return lambda step: max(0.0, 1.0 - min(step, total) / total) ** 0.9
        warmup = int(self.warmup_fraction * total)

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        return cosine

    def make_augment(self) -> PairAugment | None:
        return PairAugment() if self.augment else None


RECIPES = {
    "paper": Recipe("paper", "sgd", lr=0.01, weight_decay=1e-4, batch_size=24, schedule="poly", augment=False),
    "default": Recipe("default", "adamw", lr=2e-3, weight_decay=1e-4, batch_size=8, schedule="cosine",
                      augment=True, warmup_fraction=0.03),
}


def parse_ablate(text: str | None) -> tuple[str, ...]:
    """"da,fd" -> ("da", "fd"); unknown names are a ValueError listing the valid ones."""
    if not text:
        return ()
    names = tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"--ablate: unknown term(s) {unknown}; choose from {','.join(ABLATIONS)}")
    return names


def total_loss(seg: torch.Tensor, aux: dict[str, torch.Tensor], w_fd: float, ablate: tuple[str, ...]) -> torch.Tensor:
    """seg + w_fd * fd + 1e-4 * da, with ablated terms removed (dacl ablated: fd = mi)."""
    loss = seg
    if "fd" not in ablate:
        fd = aux["mi"] if "dacl" in ablate else aux["fd"]
        loss = loss + w_fd * fd
    if "da" not in ablate:
        loss = loss + DA_WEIGHT * aux["da"]
    return loss
