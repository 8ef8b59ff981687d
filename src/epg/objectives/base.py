"""What a stage is to the engine: an objective that owns the trained network and returns a loss."""

from __future__ import annotations

import torch
from torch import nn

from epg.config import Config
from epg.pixels import normalize
from epg.rng import SampleRNG


class Objective(nn.Module):
    """Base class of the three stages; the engine wraps it in DDP and trains `self.net`."""

    stage = ""

    def __init__(self, cfg: Config, net: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.net = net

    def forward(self, images: torch.Tensor, labels: torch.Tensor, rng: SampleRNG, step: int,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss over the micro-batch and its named terms (detached, for logging)."""
        raise NotImplementedError

    def after_optimizer_step(self, step: int) -> None:
        """Per-step bookkeeping outside the optimizer (e.g. the stage-1 EMA teacher)."""

    def extra_modules(self) -> dict[str, nn.Module]:
        """Networks besides the trained one whose weights travel with every checkpoint (the stage-1 teacher, the
        frozen W); the engine saves them as ``extra.<name>.*`` and restores those a checkpoint holds."""
        return {}

    def extra_meta(self) -> dict:
        """JSON facts a resume needs to rebuild the extra networks (e.g. the frozen network's shape)."""
        return {}

    def prepare(self, images: torch.Tensor, rng: SampleRNG, hflip: bool) -> torch.Tensor:
        """uint8 images → normalised float, with a per-sample random horizontal flip."""
        x = normalize(images, self.cfg.noise.normalization)
        if hflip:
            flip = rng.rand("hflip", 1).view(-1, 1, 1, 1) < 0.5
            x = torch.where(flip, x.flip(-1), x)
        return x

