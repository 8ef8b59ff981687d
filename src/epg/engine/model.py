"""What is trained, behind one handle: the objective and its network, their DDP/FSDP wrapping, EMA, optimizer,
and their full (unsharded) state for checkpoints — the same code for one process, DDP and FSDP2."""

from __future__ import annotations

import contextlib
from pathlib import Path

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
from torch.nn.parallel import DistributedDataParallel

from epg.config import Config
from epg.engine import checkpoint as ck
from epg.engine.schedule import ema_decay, ema_update
from epg.engine.setup import DistEnv, param_groups
from epg.nn import set_activation_checkpointing
from epg.objectives import Objective
from epg.stages import build_network

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
    ck.check_state(net, state, what)
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


class TrainedModel:
    """The objective (which owns the trained network), EMA weights, AdamW and the fp16 loss scaler.

    `forward` is the callable the training step runs (the objective, or its DDP wrapper after `wrap`).
    """

    def __init__(self, objective: Objective, cfg: Config, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.objective = objective.to(env.device)
        self.net = objective.net
        self.fsdp = cfg.train.fsdp and env.world > 1
        if cfg.train.activation_checkpointing:
            set_activation_checkpointing(self.net, True)
        if self.fsdp:
            shard_with_fsdp(self.net)
        if cfg.train.compile:
            self.net.compile()
        self.trained_names = [n for n, p in self.net.named_parameters() if p.requires_grad]
        self.trained = [p for p in self.net.parameters() if p.requires_grad]
        self.ema = [p.detach().clone().float() for p in self.trained] if cfg.optim.ema > 0 else None
        # The fused AdamW kernel on every device: on CPU it took 0.37x the time of the per-tensor loop at
        # fmnist-tiny and 0.21x at B size (foreach was slower still), agreeing with it to 1 ulp
        # (tests/test_performance.py).
        self.opt = torch.optim.AdamW(param_groups(self.net, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                     eps=cfg.optim.eps, fused=True)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.train.precision == "fp16")
        self.forward = self.objective
        self._ddp: DistributedDataParallel | None = None

    def wrap(self) -> None:
        """DDP around the objective for several processes (after the weights are final: resume first)."""
        if self.env.world > 1 and not self.fsdp:
            self._ddp = DistributedDataParallel(self.objective, broadcast_buffers=False)
            self.forward = self._ddp

    def accumulating(self, sync: bool) -> contextlib.AbstractContextManager:
        """No gradient all-reduce for a micro-batch that is not the step's last."""
        if self.fsdp:
            self.net.set_requires_gradient_sync(sync)
        return contextlib.nullcontext() if sync or self._ddp is None else self._ddp.no_sync()

    # ---------------------------------------------------------------- the update
    def grad_norm(self, step: int) -> torch.Tensor:
        """The total gradient norm after unscaling (fp16), clipping it when the recipe asks."""
        o = self.cfg.optim
        self.scaler.unscale_(self.opt)
        if o.grad_clip > 0 and step >= o.warmup_steps:
            norm = torch.nn.utils.clip_grad_norm_(self.trained, o.grad_clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.trained if p.grad is not None], foreach=True)
        return full_tensor(norm)

    def skip(self) -> None:
        """Drop this step's gradients (skip mode); the fp16 scaler still learns from them."""
        self.opt.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update()

    def update(self, step: int) -> None:
        """AdamW, then the EMA and the objective's own per-step state (the stage-1 teacher)."""
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            ema_update(self.ema, self.trained, ema_decay(step, self.cfg.optim))
        self.objective.after_optimizer_step(step)

    # ---------------------------------------------------------------- state
    def ema_state(self) -> dict[str, torch.Tensor]:
        """Full EMA weights as a state dict of the trained network (buffers from the online net).

        Every rank must call it (it gathers shards under FSDP); the result is complete on rank 0.
        """
        state = model_state(self.net)
        if self.ema is not None:
            full = [full_tensor(e).cpu() for e in self.ema]
            if state:
                state.update(zip(self.trained_names, full))
        return state

    def eval_network(self) -> nn.Module:
        """An unsharded network holding the EMA weights (the online ones without EMA); every rank must call it."""
        state = self.ema_state()  # gathers shards under FSDP, hence on every rank
        net = build_network(self.cfg)
        if self.fsdp:  # only rank 0 holds the gathered state: share it
            objects = [state]
            torch.distributed.broadcast_object_list(objects, src=0)
            state = objects[0]
        net.load_state_dict(state)
        return net.to(self.env.device).eval()

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """(tensors, JSON meta) of a checkpoint; every rank must call it, the result is complete on rank 0."""
        model = model_state(self.net)
        opt_tensors, opt_meta = optimizer_state(self.net, self.opt)
        ema = self.ema_state() if self.ema is not None else None
        extra = {f"extra.{name}.{k}": v for name, module in self.objective.extra_modules().items()
                 for k, v in module.state_dict().items()}
        tensors = {"model": model, "state": {**opt_tensors, **extra}}
        if ema is not None:
            tensors["ema"] = ema
        meta = {"optimizer": opt_meta, "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                **self.objective.extra_meta()}
        return tensors, meta

    def load(self, path: Path) -> dict:
        """Restore everything `state` saved from checkpoint `path`; returns its state.json."""
        load_model_state(self.net, ck.read_tensors(path, "model"), f"{path}/model.safetensors")
        meta = ck.read_state_meta(path)
        state = ck.read_tensors(path, "state")
        load_optimizer_state(self.net, self.opt, state, meta["optimizer"])
        for name, module in self.objective.extra_modules().items():
            prefix = f"extra.{name}."
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if own:  # an imported checkpoint holds no frozen W: it then came from --init
                ck.load_state_strict(module, own, f"the {name} network of {path}")
        if self.ema is not None:
            ema = ck.read_tensors(path, "ema")
            self.ema = [like_parameter(p, ema[n]) for n, p in zip(self.trained_names, self.trained)]
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        return meta
