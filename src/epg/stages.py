"""The stage registry: each stage of METHOD.md §3–§5 as one object — its network, objective, sampler, evaluations.

Code that differs by stage asks the stage (`stage_of(cfg)`), never compares `cfg.stage` with a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from epg.config import STAGES, Config, ConfigError, ModelConfig
from epg.nn import Compute, build_generator, build_rcm, generator_compute, rcm_compute
from epg.objectives import ConsistencyObjective, DiffusionObjective, Objective, PretrainObjective


@dataclass(frozen=True)
class Stage:
    name: str
    network: Callable[[ModelConfig], nn.Module]  # a freshly initialised network of the stage
    compute: Callable[[ModelConfig], Compute]  # its analytic MACs
    objective: type[Objective]  # built as objective(cfg, network, **auxiliary networks)
    sampler: str | None  # the default `sample.sampler`; None: no decoder, nothing to sample
    hooks: tuple[str, ...]  # evaluations during training, by name (`epg.evaluation.HOOKS`)
    command: str  # the command that trains it
    what: str  # what a checkpoint of it holds, for people
    encoder_init: bool = False  # `--init` copies a stage-1 encoder into the network
    frozen_init: Callable[[Config], bool] = lambda cfg: False  # the objective also takes `--init` whole, frozen
    shardable: bool = True  # `train.fsdp` applies (stage 1, at most 227M parameters, uses DDP)

    @property
    def generates(self) -> bool:
        return self.sampler is not None


REGISTRY: dict[str, Stage] = {s.name: s for s in (
    Stage("pretrain", build_rcm, rcm_compute, PretrainObjective, None, ("knn",), "epg pretrain",
          "stage-1 encoder + projector", shardable=False),
    Stage("diffusion", build_generator, generator_compute, DiffusionObjective, "heun", ("samples", "fid"),
          "epg finetune --objective diffusion", "diffusion generator", encoder_init=True),
    Stage("consistency", build_generator, generator_compute, ConsistencyObjective, "consistency", ("samples", "fid"),
          "epg finetune --objective consistency", "consistency generator", encoder_init=True,
          frozen_init=lambda cfg: cfg.consistency.aux_weight > 0),
)}
assert tuple(REGISTRY) == STAGES


def stage_of(cfg: Config | str) -> Stage:
    """The stage of a config (or a stage name)."""
    name = cfg if isinstance(cfg, str) else cfg.stage
    if name not in REGISTRY:
        raise ConfigError(f"unknown stage {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_network(cfg: Config) -> nn.Module:
    """A freshly initialised network of the config's stage and model."""
    return stage_of(cfg).network(cfg.model)


def require_generator(cfg: Config, source: object) -> None:
    """Refuse to sample from a network without a decoder, naming where it came from."""
    if not stage_of(cfg).generates:
        raise ConfigError(f"{source} is a stage-1 network (pretrain): it has no decoder to sample with")
