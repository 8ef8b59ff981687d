"""Process-group set-up for torchrun (DDP on NCCL or gloo) and the few collectives the objectives need."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from epg.config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' = this process's GPU when CUDA is present, else the CPU."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {pref!r} but this machine has no usable CUDA GPU "
                          f"(or this torch build has no CUDA); use --train.device cpu or auto")
    if pref == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device = 'mps' but MPS is not available here; use --train.device cpu or auto")
    if pref == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(pref)


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1), else run as world size 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world, local_rank, device)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
