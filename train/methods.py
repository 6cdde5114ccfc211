"""Training options from related work: `--fusion`, `--negatives`, `--mir`, `--distill`, `--dtm`.

`MethodOptions` turns the flags into model config overrides (fusion, negatives,
clusters, centroid_momentum, mir: they change the network or its buffers, so the
checkpoint holds them) and per-step settings (distill, dtm). The recipe weighs
the new terms (`recipes.LOSS_TERMS`); `MethodTerms` runs the Dynamic Training
Monitoring (factors on those weights) and gives the values logged per epoch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from endofuse.errors import EndofuseError
from endofuse.model.mm_endocl import DISTILL_TERMS, FUSIONS, METHOD_KEYS, NEGATIVES
from endofuse.train import distributed as ddp
from endofuse.train.dtm import TrainingMonitor

LOG_KEYS = (*METHOD_KEYS, "dtm_relation", "dtm_prototype")


def parse_distill(text: str | None) -> tuple[str, ...]:
    """"relation,prototype" -> ("prototype", "relation"); unknown names are an EndofuseError."""
    if not text:
        return ()
    names = tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))
    unknown = [n for n in names if n not in DISTILL_TERMS]
    if unknown:
        raise EndofuseError(f"--distill: unknown term(s) {unknown}; choose from {','.join(DISTILL_TERMS)}")
    return names


@dataclass(frozen=True)
class MethodOptions:
    fusion: str = "token"
    negatives: str = "batch"
    clusters: int = 16
    centroid_momentum: float = 0.9
    mir: bool = False
    distill: tuple[str, ...] = ()
    dtm: bool = False

    def check(self, model_name: str) -> None:
        """One-line EndofuseError for a combination that cannot train."""
        if self.fusion not in FUSIONS:
            raise EndofuseError(f"--fusion must be one of {','.join(FUSIONS)}, got {self.fusion!r}")
        if self.negatives not in NEGATIVES:
            raise EndofuseError(f"--negatives must be one of {','.join(NEGATIVES)}, got {self.negatives!r}")
        if self.fusion != "token" and model_name == "paper":
            raise EndofuseError("--fusion dmaf is for --model tiny or small; paper keeps the reference fusion")
        if self.clusters < 2:
            raise EndofuseError(f"--clusters must be >= 2 (a second-nearest centroid is needed), got {self.clusters}")
        if not 0.0 <= self.centroid_momentum < 1.0:
            raise EndofuseError(f"--centroid-momentum must be in [0, 1), got {self.centroid_momentum}")
        if self.dtm and not self.distill:
            raise EndofuseError("--dtm reweights the distillation terms: give --distill relation,prototype too")
        if self.distill and model_name == "paper" and self.fusion == "token":
            raise EndofuseError("--distill needs a missing-NBI path: --model tiny or small (paper feeds WLI twice)")

    def model_overrides(self) -> dict:
        """Config keys that differ from the defaults (so a default run builds exactly today's model)."""
        default = MethodOptions()
        keys = ("fusion", "negatives", "clusters", "centroid_momentum", "mir")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) != getattr(default, k)}
        if self.negatives == "batch":  # centroid settings mean nothing without centroids
            out.pop("clusters", None)
            out.pop("centroid_momentum", None)
        return out

    def as_dict(self) -> dict:
        return {**asdict(self), "distill": list(self.distill)}


class MethodTerms:
    """DTM factors on the new terms' weights, and the terms' per-epoch log values."""

    def __init__(self, options: MethodOptions, dist_state):
        self.options, self.d = options, dist_state
        self.monitor = TrainingMonitor(terms=options.distill) if options.dtm else None

    def factors(self) -> dict[str, float]:
        return self.monitor.factors() if self.monitor is not None else {}

    def observe(self, aux: dict[str, torch.Tensor]) -> None:
        """Feed this step's distillation gaps (mean over ranks, so every rank keeps one state) to DTM."""
        if self.monitor is None:
            return
        values = ddp.all_reduce_sum(self.d, [float(aux[k].detach()) for k in self.options.distill])
        self.monitor.observe({k: v / self.d.world_size for k, v in zip(self.options.distill, values, strict=True)})

    def step_values(self, aux: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per-step values to average into the epoch's row (absent terms are not logged)."""
        out = {k: float(aux[k].detach()) for k in METHOD_KEYS if k in aux}
        for k, f in self.factors().items():
            out[f"dtm_{k}"] = f
        return out

    def state_dict(self) -> dict | None:
        return self.monitor.state_dict() if self.monitor is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.monitor is not None and state is not None:
            self.monitor = TrainingMonitor.from_state(state)
