"""The three stages as objectives for the one training engine (METHOD.md §3–§5)."""

from __future__ import annotations

import torch

from epg.config import Config, ModelConfig
from epg.engine.checkpoint import load_network, load_pretrained_encoder
from epg.nn import build_generator, build_rcm
from epg.objectives.base import Objective
from epg.objectives.consistency import ConsistencyObjective
from epg.objectives.diffusion import DiffusionObjective
from epg.objectives.pretrain import PretrainObjective

__all__ = ["ConsistencyObjective", "DiffusionObjective", "Objective", "PretrainObjective", "build_objective"]


def build_objective(cfg: Config, device: torch.device | str = "cpu", verbose: bool = True,
                    resume_meta: dict | None = None) -> Objective:
    """The stage's objective around a freshly initialised network (+ the stage-1 encoder for stage 2).

    `resume_meta` (the state.json of the run's own checkpoint) means the checkpoint will supply every weight:
    `train.init_from` is then not read at all, so a resumed run depends on its own checkpoint only.
    """
    if cfg.stage == "pretrain":
        return PretrainObjective(cfg, build_rcm(cfg.model))
    gen = build_generator(cfg.model)
    if cfg.train.init_from and resume_meta is None:
        keys = load_pretrained_encoder(gen, cfg.train.init_from)
        if verbose:
            print(f"epg: encoder initialised from {cfg.train.init_from}: {len(keys)} tensors "
                  f"(encoder.{keys[0]} … encoder.{keys[-1]}); projector dropped")
    if cfg.stage == "diffusion":
        return DiffusionObjective(cfg, gen)
    frozen, frozen_model = None, None
    if resume_meta is not None and "frozen_model" in resume_meta:  # weights follow from the checkpoint
        frozen_model = ModelConfig(**resume_meta["frozen_model"])
        frozen = build_rcm(frozen_model).to(device)
    elif cfg.train.init_from and cfg.consistency.aux_weight > 0:
        frozen, init_cfg, _ = load_network(cfg.train.init_from, prefer_ema=False, device=device)
        frozen_model = init_cfg.model
    return ConsistencyObjective(cfg, gen, frozen, frozen_model)
