"""Learning-rate schedules and the EMA update (METHOD.md §3–§5 hyper-parameters)."""

from __future__ import annotations

import math

import torch

from epg.config import OptimConfig


def learning_rate(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Linear warm-up to `lr`, then cosine to 0, step-wise factors, or constant (0-based `step`).

    As the authors' schedule: warm-up gives lr·step/W (0 at step 0), a step factor applies from the step after
    its milestone.
    """
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * step / optim.warmup_steps
    if optim.schedule == "cosine":
        span = max(total_steps - optim.warmup_steps, 1)
        progress = min((step - optim.warmup_steps) / span, 1.0)
        return optim.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if optim.schedule == "steps":
        factor = 1.0
        for milestone, f in zip(optim.milestones, optim.factors):
            if step > milestone:
                factor = f
        return optim.lr * factor
    return optim.lr


def ema_decay(step: int, optim: OptimConfig) -> float:
    """EMA decay at `step` (0-based): `ema`, or with warm-up min(ema, (1 + step)/(10 + step)).

    Without warm-up a constant decay d keeps d^n of the initial (random, zero-head) weights after n steps —
    22 % after 1 500 steps at d = 0.999 — which ruins the EMA samples of short runs. The warm-up reaches
    0.9999 after 90k steps, so a paper-length run (1M steps) averages the same weights either way.
    """
    if not optim.ema_warmup:
        return optim.ema
    return min(optim.ema, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: list[torch.Tensor], online: list[torch.Tensor], decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·online, in place, fp32."""
    torch._foreach_lerp_(ema, [p.detach().float() for p in online], 1.0 - decay)
