"""Training recipes: optimiser, per-iteration LR schedule, augmentation, and the loss.

`paper` is the reference recipe: SGD 0.01, momentum 0.9, weight decay 1e-4,
poly(0.9) decay every iteration, batch 24, no augmentation, seed 1234.
`default` is ours: AdamW + cosine (with a short warm-up) + paired
augmentations. Both train the same loss, defined here once (weights, ramp and
DACL temperature; the model's `forward_train` returns the raw terms):
    total = 0.5 CE + 0.5 Dice + w_fd(epoch) * fd + 1e-4 * da
    fd = mi + 0.01 * dacl,  w_fd = min(0.05, 0.1 * epoch / epochs),  DACL temperature 0.1
A new term is one `LossTerm` entry in `LOSS_TERMS`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from endofuse.model.losses import dice_loss
from endofuse.train.augment import PairAugment


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


# ---- the loss: every weight and the DACL temperature, once ----
CE_WEIGHT = 0.5
DICE_WEIGHT = 0.5
DACL_TEMPERATURE = 0.1  # handed to the model's forward_train


@dataclass(frozen=True)
class LossTerm:
    """`weight_at(epoch) * sum(coefficient * aux[part])` over the raw terms of `forward_train`.

    `ramp`: the weight grows as min(weight, ramp * epoch / epochs) (0-based epochs).
    `--ablate NAME` drops the term; naming one of its `optional_parts` drops only
    that part. Parts the model did not return (their option is off) add nothing,
    nor does a term with none of its parts.
    """

    name: str
    parts: tuple[tuple[str, float], ...]
    weight: float
    ramp: float | None = None
    optional_parts: tuple[str, ...] = ()
    ablatable: bool = True  # offered by --ablate (the related-work terms have their own switches)

    def weight_at(self, epoch: int, epochs: int) -> float:
        if self.ramp is None:
            return self.weight
        return min(self.weight, self.ramp * epoch / max(1, epochs))

    def value(self, aux: dict[str, torch.Tensor], ablate: tuple[str, ...] = ()) -> torch.Tensor | None:
        """The unweighted term, or None when the model returned none of its parts."""
        present = [(key, c) for key, c in self.parts if key in aux]
        if not present:
            return None
        total = None
        for key, coefficient in present:
            if key in ablate and key in self.optional_parts:
                continue
            total = aux[key] * coefficient if total is None else total + aux[key] * coefficient
        return total if total is not None else aux[present[0][0]] * 0.0

    def formula(self, aux_keys=None) -> str:
        shown = [(key, c) for key, c in self.parts if aux_keys is None or key in aux_keys]
        parts = " + ".join(key if c == 1.0 else f"{c:g}*{key}" for key, c in shown)
        weight = f"w_{self.name}(epoch)" if self.ramp is not None else f"{self.weight:g}"
        ramp = f", w_{self.name}=min({self.weight:g}, {self.ramp:g}*epoch/epochs)" if self.ramp is not None else ""
        return f"{weight}*{self.name}" + (f" ({self.name}={parts}{ramp})" if parts != self.name or ramp else "")

    def describes(self, aux_keys) -> bool:
        return any(key in aux_keys for key, _ in self.parts)


LOSS_TERMS: tuple[LossTerm, ...] = (
    # multi-scale distribution alignment (MMD of pooled shallow features)
    LossTerm("da", (("da", 1.0),), weight=1e-4),
    # feature disentanglement: mean of the cosine terms plus the contrastive loss, ramped in;
    # with --negatives cluster (CM-CGNS) the false-negative margin rides with it at 1e-4 of its weight
    LossTerm("fd", (("mi", 1.0), ("dacl", 0.01), ("cgns", 0.01 * 1e-4)), weight=0.05, ramp=0.1,
             optional_parts=("dacl",)),
    # related-work terms, returned by forward_train only when their option is on
    LossTerm("mir", (("mir", 1.0),), weight=10.0, ablatable=False),  # CM-CGNS: 10 x L1 of the reconstruction
    LossTerm("relation", (("relation", 1.0),), weight=1.0, ablatable=False),  # DMAF-Net gives no value: ours
    LossTerm("prototype", (("prototype", 1.0),), weight=1.0, ablatable=False),  # ditto
    # --fusion dmaf: each modality's fusion term alone segments the token grid (ours, against the NBI collapse)
    LossTerm("modality", (("modality", 1.0),), weight=0.5, ablatable=False),
)
# --ablate names: whole terms, their optional parts, and "nbi" (train WLI-only)
ABLATIONS = (tuple(t.name for t in LOSS_TERMS if t.ablatable)
             + tuple(p for t in LOSS_TERMS if t.ablatable for p in t.optional_parts) + ("nbi",))


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE_WEIGHT * CrossEntropy + DICE_WEIGHT * soft Dice (the reference's segmentation objective)."""
    return CE_WEIGHT * F.cross_entropy(logits, target.long()) + DICE_WEIGHT * dice_loss(logits, target)


def loss_term(name: str) -> LossTerm:
    return next(t for t in LOSS_TERMS if t.name == name)


def fd_weight(epoch: int, epochs: int) -> float:
    """The progressive weight of the fd term at (0-based) `epoch`: min(0.05, 0.1 * epoch / epochs)."""
    return loss_term("fd").weight_at(epoch, epochs)


def term_values(aux: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each term's unweighted, unablated value (for the log), for the terms the model returned."""
    values = {t.name: t.value(aux) for t in LOSS_TERMS}
    return {name: v for name, v in values.items() if v is not None}


def total_loss(seg: torch.Tensor, aux: dict[str, torch.Tensor], epoch: int, epochs: int,
               ablate: tuple[str, ...] = (), factors: dict[str, float] | None = None) -> torch.Tensor:
    """seg + sum over LOSS_TERMS of weight(epoch) * factor * term, ablated terms and parts removed.

    `factors` scales named terms at run time (Dynamic Training Monitoring); 1 when absent.
    """
    loss = seg
    for term in LOSS_TERMS:
        if term.name in ablate:
            continue
        value = term.value(aux, ablate)
        if value is not None:
            factor = 1.0 if factors is None else factors.get(term.name, 1.0)
            loss = loss + term.weight_at(epoch, epochs) * factor * value
    return loss


def loss_description(aux_keys=None) -> str:
    """The loss as one line (config.json's "loss"); with `aux_keys`, only the terms a model returns."""
    terms = " + ".join(t.formula(aux_keys) for t in LOSS_TERMS if aux_keys is None or t.describes(aux_keys))
    return f"{CE_WEIGHT:g}*CE + {DICE_WEIGHT:g}*Dice + {terms}, DACL temperature {DACL_TEMPERATURE:g}"


def loss_config() -> dict:
    """Every weight of the loss, for config.json."""
    return {"ce": CE_WEIGHT, "dice": DICE_WEIGHT, "dacl_temperature": DACL_TEMPERATURE,
            "terms": [{"name": t.name, "parts": dict(t.parts), "weight": t.weight, "ramp": t.ramp,
                       "optional_parts": list(t.optional_parts)} for t in LOSS_TERMS]}


def parse_ablate(text: str | None) -> tuple[str, ...]:
    """"da,fd" -> ("da", "fd") (checked against ABLATIONS with the other options, by the trainer)."""
    if not text:
        return ()
    return tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))
