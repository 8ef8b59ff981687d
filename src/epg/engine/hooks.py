"""The engine's interface to what runs during training (evaluations live above it, in `epg.evaluation`).

A hook is called after every step with a `RunView` — the run's config, directory, processes and its networks —
never with the Trainer itself, and returns scalars to log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from tqdm import tqdm

from epg.config import Config
from epg.engine.setup import DistEnv


@dataclass(frozen=True)
class RunView:
    cfg: Config
    run_dir: Path
    env: DistEnv
    online: Callable[[], nn.Module]  # the network being trained, as it is now (unwrapped)
    eval_network: Callable[[], nn.Module]  # an unsharded copy with the EMA weights; every rank must call it


Hook = Callable[[RunView, int], dict | None]


class Every:
    """Run `fn` at every multiple of `every` steps and at the last one, saying what runs (training pauses)."""

    def __init__(self, every: int, fn: Hook, what: str):
        self.every, self.fn, self.what = every, fn, what

    def __call__(self, run: RunView, step: int) -> dict:
        if step % self.every and step != run.cfg.train.steps:
            return {}
        if run.env.is_main:
            tqdm.write(f"epg: step {step}: {self.what} (training pauses meanwhile)")
        return self.fn(run, step) or {}
