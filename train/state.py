"""Resumable training state: RNG capture/restore and the stop flag set by SIGINT/SIGTERM.

Everything stored goes through `torch.load(weights_only=True)`, so RNG states are
kept as tensors, ints and tuples only (no numpy objects).
"""
from __future__ import annotations

import random
import signal
import threading

import numpy as np
import torch


def capture_rng() -> dict:
    """This process's RNG states (torch CPU, CUDA, Python, NumPy) in weights_only-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopFlag:
    """Set by the first SIGINT/SIGTERM so training can save a resumable checkpoint and exit.

    A second SIGINT raises KeyboardInterrupt at once (the user insists).
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    @property
    def signal_name(self) -> str:
        """The signal that stopped training; SIGINT for a rank stopped because another rank got one (torchrun)."""
        return self.requested or signal.SIGINT.name

    @property
    def exit_code(self) -> int:
        """128 + the signal, as the shell reports it: 130 SIGINT, 143 SIGTERM."""
        return 128 + signal.Signals[self.signal_name].value

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
