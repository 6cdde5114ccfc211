"""Dynamic Training Monitoring (`--dtm`), after DMAF-Net.

DMAF-Net tracks the distillation gaps during training and reweights the losses
so the modality paths converge at a balanced speed. Restated (GradNorm-style
relative rates, our decision: the paper gives no formula we can check):

    ema_k   <- decay * ema_k + (1 - decay) * gap_k          (first value: ema_k = initial_k = gap_k)
    r_k      = ema_k / initial_k                            how much of its gap term k still has
    factor_k = clip((r_k / mean_j r_j) ** alpha, low, high)

A term that closes its gap more slowly than the others gets a larger weight.
The recipe's weight of term k is multiplied by factor_k. The state is plain
floats, kept in `last.pt`, so `--resume` continues it exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TrainingMonitor:
    terms: tuple[str, ...]
    decay: float = 0.9
    alpha: float = 1.0
    low: float = 0.2
    high: float = 5.0
    initial: dict[str, float] = field(default_factory=dict)
    ema: dict[str, float] = field(default_factory=dict)

    def observe(self, gaps: dict[str, float]) -> None:
        """Update the moving averages with this step's gap values (floats, >= 0)."""
        for k in self.terms:
            value = float(gaps[k])
            if k not in self.initial:
                if value > 0:  # a term that is 0 (e.g. no labelled class yet) does not start the clock
                    self.initial[k], self.ema[k] = value, value
                continue
            self.ema[k] = self.decay * self.ema[k] + (1.0 - self.decay) * value

    def factors(self) -> dict[str, float]:
        """Multiplier of each term's base weight (1 until every term has been seen)."""
        if any(k not in self.initial for k in self.terms):
            return {k: 1.0 for k in self.terms}
        rates = {k: self.ema[k] / self.initial[k] for k in self.terms}
        mean = sum(rates.values()) / len(rates)
        if mean <= 0:
            return {k: 1.0 for k in self.terms}
        return {k: min(self.high, max(self.low, (r / mean) ** self.alpha)) for k, r in rates.items()}

    def state_dict(self) -> dict:
        state = asdict(self)
        state["terms"] = list(self.terms)
        return state

    @classmethod
    def from_state(cls, state: dict) -> TrainingMonitor:
        return cls(**{**state, "terms": tuple(state["terms"])})
