"""The collectives the project needs, as no-ops in a single process (torchrun's process group when joined)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all processes along dim 0 (no gradient: used for keys/negatives)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (for logging)."""
    if world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
