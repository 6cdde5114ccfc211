"""Process-group plumbing for `torchrun` (nccl on CUDA, gloo on CPU); single-process is world size 1."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from endofuse.checks import check_device


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = check_device(device)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device or "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, dev)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(d: Dist, values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a short list of floats (identity on one process)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(d: Dist, flags: list[bool]) -> list[bool]:
    """Per flag: is it set on any rank? Keeps every rank on the same control path."""
    return [v > 0 for v in all_reduce_sum(d, [float(f) for f in flags])]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
