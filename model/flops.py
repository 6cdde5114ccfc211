"""FLOPs of one WLI/NBI pair: what the benchmarks divide their latencies by."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def pair_flops(model: torch.nn.Module, wli_only: bool = False) -> float:
    """Matmul + conv FLOPs of one forward pass at batch 1 (torch's counter: 2 per multiply-add)."""
    size = model.img_size
    wli, nbi = torch.rand(1, 3, size, size), torch.rand(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(wli, None if wli_only else nbi)
    return float(counter.get_total_flops())
