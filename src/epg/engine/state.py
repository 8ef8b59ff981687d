"""Full (unsharded) training state for checkpoints, the same code for one process, DDP and FSDP2."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from epg.engine.checkpoint import check_state

# Gathered on every rank (a collective under FSDP), materialised on rank 0's CPU.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def shard_with_fsdp(net: nn.Module) -> None:
    """FSDP2: shard every transformer block, then the rest of the network (for the largest presets)."""
    from torch.distributed.fsdp import fully_shard

    for module in list(net.modules()):
        if module is not net and isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(net)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter or EMA copy; a collective under FSDP."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def model_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict on rank 0 ({} on other ranks under FSDP)."""
    return get_model_state_dict(net, options=_GATHER)


def load_model_state(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Check names and shapes (naming any mismatch), then load a full state dict into a possibly sharded net."""
    check_state(net, state, what)
    set_model_state_dict(net, state, options=_LOAD)


def optimizer_state(net: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer tensors keyed `optim.<param name>.<slot>` and the JSON-able param groups."""
    sd = get_optimizer_state_dict(net, opt, options=_GATHER)
    tensors = {f"optim.{name}.{slot}": v for name, slots in sd.get("state", {}).items()
               for slot, v in slots.items() if isinstance(v, torch.Tensor)}
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd.get("param_groups", [])]
    return tensors, {"param_groups": groups}


def load_optimizer_state(net: nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict) -> None:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            name, slot = key[len("optim."):].rsplit(".", 1)
            state.setdefault(name, {})[slot] = v
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    set_optimizer_state_dict(net, opt, optim_state_dict={"state": state, "param_groups": groups}, options=_LOAD)


def like_parameter(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """A full fp32 tensor laid out like `param` (sharded the same way under FSDP)."""
    full = full.float().to(param.device)
    if isinstance(param, DTensor):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, param.device_mesh, param.placements)
    return full
