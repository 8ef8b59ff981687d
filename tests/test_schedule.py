"""Learning-rate schedules and the EMA (engine/schedule.py): hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from epg.config import OptimConfig
from epg.engine.schedule import ema_decay, ema_update, learning_rate


def test_warmup_then_cosine() -> None:
    o = OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine")
    assert learning_rate(0, o, 110) == 0.0
    assert learning_rate(1, o, 110) == pytest.approx(1e-4)
    assert learning_rate(9, o, 110) == pytest.approx(9e-4)
    assert learning_rate(10, o, 110) == pytest.approx(1e-3)
    assert learning_rate(60, o, 110) == pytest.approx(0.5e-3)  # half-way through the cosine
    assert learning_rate(35, o, 110) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(110, o, 110) == pytest.approx(0.0, abs=1e-12)


def test_step_factors_after_warmup() -> None:
    o = OptimConfig(lr=1e-4, warmup_steps=0, schedule="steps", milestones=(400, 500), factors=(0.3, 0.08))
    assert [learning_rate(s, o, 1000) for s in (0, 399, 400, 401, 499, 500, 501, 999)] == pytest.approx(
        [1e-4, 1e-4, 1e-4, 3e-5, 3e-5, 3e-5, 8e-6, 8e-6])


def test_warmup_then_steps_at_every_boundary() -> None:
    # The authors' consistency schedule (W = 10k, ×0.3 after 400k, ×0.08 after 500k), scaled down by 1000.
    o = OptimConfig(lr=1e-4, warmup_steps=10, schedule="steps", milestones=(400, 500), factors=(0.3, 0.08))
    steps = (0, 1, 9, 10, 11, 400, 401, 500, 501)
    assert [learning_rate(s, o, 1000) for s in steps] == pytest.approx(
        [0.0, 1e-5, 9e-5, 1e-4, 1e-4, 1e-4, 3e-5, 3e-5, 8e-6])


def test_ema_decay_warmup_values() -> None:
    o = OptimConfig(ema=0.999)
    assert ema_decay(0, o) == pytest.approx(0.1)
    assert ema_decay(10, o) == pytest.approx(11 / 20)
    assert ema_decay(8990, o) == pytest.approx(0.999)  # (1 + 8990)/(10 + 8990) = 0.999 exactly
    assert ema_decay(100_000, o) == 0.999
    assert ema_decay(0, OptimConfig(ema=0.999, ema_warmup=False)) == 0.999


def test_ema_forgets_the_initial_weights_in_a_short_run() -> None:
    # A parameter that jumps from 0 to 1 at step 0 and stays there: with warm-up the EMA after 1 500 steps
    # is within 1 % of 1; with a constant 0.999 it still holds 0.999^1500 ≈ 22 % of the initial 0.
    for warm, expected in ((True, None), (False, 1 - 0.999 ** 1500)):
        o = OptimConfig(ema=0.999, ema_warmup=warm)
        ema, online = [torch.zeros(3)], [torch.ones(3)]
        for step in range(1500):
            ema_update(ema, online, ema_decay(step, o))
        if expected is None:
            assert float(ema[0][0]) > 0.99
        else:
            assert float(ema[0][0]) == pytest.approx(expected, rel=1e-4)
