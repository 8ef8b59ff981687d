"""The Python API: `epg.load(path)` → a `Pipeline` that samples images and encodes them.

    pipe = epg.load("runs/demo/diffusion")          # a run dir, a checkpoint dir, an exported model folder,
    images = pipe.sample([0, 1, 2], seed=0)          # or a run made by `epg import`; uint8 N×H×W×C
    feats = pipe.encode(images, sigma=0.002)         # LN(CLS) of the encoder at an (unshifted) σ
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from epg.config import Config, ConfigError, apply_overrides
from epg.engine.checkpoint import load_network
from epg.generate import generate
from epg.metrics.knn import encoder_features
from epg.stages import require_generator


def _as_nchw(images: Any) -> torch.Tensor:
    """uint8 images as N×H×W×C numpy / N×C×H×W tensor / a list of PIL images → an N×C×H×W tensor."""
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im) for im in images])
    if isinstance(images, np.ndarray):
        arr = images[..., None] if images.ndim == 3 else images
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return images
    raise TypeError("images: expected N×H×W[×C] uint8 numpy, an N×C×H×W tensor or a list of PIL images")


@dataclasses.dataclass
class Pipeline:
    """A trained network with its config: sampling for generators, features for every stage."""

    net: nn.Module
    cfg: Config
    checkpoint: Path

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def sample(self, labels: Sequence[int] | None = None, num: int | None = None, *, steps: int | None = None,
               cfg_scale: float | None = None, sampler: str | None = None, cm_sigmas: Sequence[float] | None = None,
               seed: int = 0, batch_size: int = 64, precision: str = "bf16", output: str = "numpy",
               progress: bool = False) -> Any:
        """Images for `labels` (or `num` unconditional ones): uint8 N×H×W×C numpy, or PIL images.

        Image i depends only on (seed, i), as in `epg sample`; unset sampler options keep the model's defaults.
        """
        require_generator(self.cfg, self.checkpoint)
        overrides = {k: v for k, v in (("sample.steps", steps), ("sample.cfg_scale", cfg_scale),
                                       ("sample.sampler", sampler), ("sample.cm_sigmas", cm_sigmas)) if v is not None}
        cfg = apply_overrides(copy.deepcopy(self.cfg), overrides)
        if self.cfg.model.num_classes:
            if labels is None:
                raise ConfigError("this generator is class-conditional: pass labels")
            y = torch.as_tensor(list(labels), dtype=torch.long)
            if y.numel() and (y.min() < 0 or y.max() >= self.cfg.model.num_classes):
                raise ConfigError(f"labels must lie in 0…{self.cfg.model.num_classes - 1}")
            n = len(y)
        else:
            if labels is not None:
                raise ConfigError("this generator is unconditional: pass num, not labels")
            y, n = None, int(num or 0)
        if n <= 0:
            raise ConfigError("nothing to sample: pass at least one label (or num > 0)")
        images, _, _ = generate(self.net, cfg, range(n), n, seed, labels=y, batch_size=batch_size,
                                precision=precision, progress=progress)
        arr = images.permute(0, 2, 3, 1).numpy()
        if output == "numpy":
            return arr
        if output == "pil":
            from PIL import Image

            return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]
        raise ConfigError(f"output must be 'numpy' or 'pil', not {output!r}")

    @torch.no_grad()
    def encode(self, images: Any, sigma: float | None = None, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
        """LN(CLS) of the encoder for uint8 images noised to the unshifted `sigma` (default σ_min), N×D float32.

        The noise ε is drawn from `seed`; the images must have the model's resolution and channels.
        """
        x = _as_nchw(images)
        m = self.cfg.model
        if tuple(x.shape[1:]) != (m.channels, m.img_size, m.img_size):
            raise ConfigError(f"images are {tuple(x.shape[1:])} (C, H, W); this model takes "
                              f"{(m.channels, m.img_size, m.img_size)}")
        was_training = self.net.training
        self.net.eval()
        try:
            return encoder_features(self.net.encoder, self.cfg, x, sigma, batch_size, seed)
        finally:
            self.net.train(was_training)


def load(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> Pipeline:
    """A Pipeline from a run directory, a checkpoint directory, an exported model folder or an imported run."""
    net, cfg, ckpt = load_network(path, prefer_ema=ema, device=device)
    return Pipeline(net, cfg, ckpt)
