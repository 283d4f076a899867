"""All distributed code in one place (docs/DESIGN.md lesson 6).

Runs under ``torchrun`` (single node or multi-node through torchrun's own flags): the
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` variables select the process; without them the
run is a single process. NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from cimpt.errors import CimptError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when there is one, else the CPU."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CimptError("train.device: 'cuda' was asked for but no GPU is visible")
        return (
            torch.device("cuda", local_rank) if preference == "cuda" else torch.device(preference)
        )
    return torch.device(preference)


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group that torchrun describes, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when torch.distributed is not initialized.

    For data and evaluation code that shards its work without being handed a ``DistInfo``."""
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place); a no-op when running alone."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_from_main(t: torch.Tensor) -> torch.Tensor:
    """Overwrite ``t`` on every process with rank 0's (in place); a no-op when running alone."""
    if is_initialized():
        dist.broadcast(t, src=0)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any process (one reduction; ``flag`` when running alone).

    For decisions one rank makes for all (a refused lock, a failed checkpoint), so that every
    rank raises or goes on together instead of some waiting in a collective."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def cleanup() -> None:
    """Destroy the process group, if one was joined (the CLI calls it as each command ends;
    a no-op when running alone)."""
    if is_initialized():
        dist.destroy_process_group()
