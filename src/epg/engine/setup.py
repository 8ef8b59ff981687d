"""Run set-up: torchrun's process group, batch arithmetic, data checks, the stage's objective (with `--init`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from epg.config import Config, ConfigError, ModelConfig
from epg.engine import checkpoint as ck
from epg.objectives import Objective
from epg.stages import stage_of


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


@dataclass(frozen=True)
class Batching:
    """The global batch split over processes (local) and micro-batches (gradient accumulation)."""

    local: int
    micro: int
    accum: int

    @classmethod
    def of(cls, cfg: Config, env: DistEnv) -> Batching:
        t = cfg.train
        if t.global_batch % env.world:
            raise ConfigError(f"train.global_batch {t.global_batch} is not divisible by {env.world} processes")
        local = t.global_batch // env.world
        micro = t.micro_batch or local
        if local % micro:
            raise ConfigError(f"per-process batch {local} is not divisible by train.micro_batch {micro}")
        return cls(local, micro, local // micro)


def check_run(cfg: Config, dataset: object) -> None:
    """Refuse a config that does not fit its data or its stage, naming the setting to change."""
    if getattr(dataset, "channels", cfg.model.channels) != cfg.model.channels:
        raise ConfigError(f"the data has {dataset.channels} channels but model.channels is "
                          f"{cfg.model.channels}; set --model.channels {dataset.channels}")
    data_classes = getattr(dataset, "num_classes", 0)
    if cfg.model.num_classes and data_classes > cfg.model.num_classes:
        raise ConfigError(f"the data has {data_classes} classes but model.num_classes is {cfg.model.num_classes}; "
                          f"set --model.num_classes {data_classes} (or 0 for an unconditional model)")
    if cfg.train.fsdp and not stage_of(cfg).shardable:
        raise ConfigError("train.fsdp shards the stage-2 generator; stage 1 (at most 227M parameters) uses DDP")


def _frozen_network(cfg: Config, device: torch.device | str, resume_meta: dict | None,
                    ) -> tuple[nn.Module | None, ModelConfig | None]:
    """The frozen stage-1 network W: shaped from the run's own checkpoint on resume, else read from `--init`."""
    if resume_meta is not None and "frozen_model" in resume_meta:  # weights follow from the checkpoint
        model = ModelConfig(**resume_meta["frozen_model"])
        return stage_of("pretrain").network(model).to(device), model
    if cfg.train.init_from:
        net, init_cfg, _ = ck.load_network(cfg.train.init_from, prefer_ema=False, device=device)
        return net, init_cfg.model
    return None, None


def build_objective(cfg: Config, device: torch.device | str = "cpu", verbose: bool = True,
                    resume_meta: dict | None = None) -> Objective:
    """The stage's objective around a freshly initialised network, `--init` resolved here.

    `resume_meta` (the state.json of the run's own checkpoint) means the checkpoint will supply every weight:
    `train.init_from` is then not read at all, so a resumed run depends on its own checkpoint only.
    """
    stage = stage_of(cfg)
    net = stage.network(cfg.model)
    if stage.encoder_init and cfg.train.init_from and resume_meta is None:
        keys = ck.load_pretrained_encoder(net, cfg.train.init_from)
        if verbose:
            print(f"epg: encoder initialised from {cfg.train.init_from}: {len(keys)} tensors "
                  f"(encoder.{keys[0]} … encoder.{keys[-1]}); projector dropped")
    if stage.frozen_init(cfg) or "frozen_model" in (resume_meta or {}):
        return stage.objective(cfg, net, *_frozen_network(cfg, device, resume_meta))
    return stage.objective(cfg, net)


def encoder_lr_scale(name: str, depth: int, decay: float) -> float:
    """Layer-wise lr decay (BEiT / MAE fine-tuning): encoder block i trains at decay^(L − i) of the lr, the
    embeddings (patch, CLS, positions) at decay^(L + 1), the encoder's final LN and everything outside the
    encoder (decoder, class table, projector) at 1."""
    parts = name.split(".")
    if decay == 1.0 or parts[0] != "encoder" or parts[1] == "norm":
        return 1.0
    return decay ** (depth - int(parts[2])) if parts[1] == "blocks" else decay ** (depth + 1)


def param_groups(net: nn.Module, cfg: Config) -> list[dict]:
    """AdamW groups: weight decay on every trained tensor, except pos_embed / cls_token where the recipe says;
    with optim.layer_decay < 1, one group per encoder depth, its `lr_scale` applied by the step."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(False, 1.0): []}  # kept even when empty
    for name, p in net.named_parameters():
        if p.requires_grad:
            excluded = cfg.optim.wd_exclude == "pos_cls" and name.split(".")[-1] in ("pos_embed", "cls_token")
            scale = encoder_lr_scale(name, cfg.model.enc_depth, cfg.optim.layer_decay)
            groups.setdefault((excluded, scale), []).append(p)
    # Without layer decay these are the decay group, then the excluded one if any: checkpoints are unchanged.
    return [{"params": ps, "weight_decay": 0.0 if excluded else cfg.optim.weight_decay,
             **({"lr_scale": scale} if scale != 1.0 else {})}
            for (excluded, scale), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1]))]
