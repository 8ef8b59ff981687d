"""Stage 2a: x0-prediction diffusion fine-tuning (METHOD.md §4)."""

from __future__ import annotations

import torch
from torch import nn

from epg.config import Config
from epg.engine.rng import SampleRNG
from epg.noise import (
    c_in,
    c_noise,
    diffusion_grid_weight,
    edm_weight,
    karras_sigmas,
    sample_lognormal_grid_index,
)
from epg.objectives.base import Objective


def x0_prediction(net: nn.Module, x: torch.Tensor, sigma_shifted: torch.Tensor, labels: torch.Tensor | None,
                  sigma_data: float = 0.5) -> torch.Tensor:
    """x̂0 = G(c_in·x_σ, c_noise, y): the model predicts x0 directly (METHOD.md §4)."""
    s = sigma_shifted.float().view(-1, 1, 1, 1)
    return net(c_in(s, sigma_data) * x, c_noise(sigma_shifted.float()), labels)


def drop_labels(labels: torch.Tensor, u: torch.Tensor, p: float, null_label: int) -> torch.Tensor:
    """Replace each label by the null label with probability p (CFG training, METHOD.md §4)."""
    return torch.where(u < p, torch.full_like(labels, null_label), labels)


class DiffusionObjective(Objective):
    """E[λ(σ_i)·‖x̂0 − x0‖²] with σ log-normal, snapped to a Karras grid, then shifted (METHOD.md §4)."""

    stage = "diffusion"

    def __init__(self, cfg: Config, net: nn.Module):
        super().__init__(cfg, net)
        n = cfg.noise
        self.grid = karras_sigmas(cfg.diffusion.grid_points, n.sigma_min, n.sigma_max, n.rho)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, rng: SampleRNG, step: int,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, n, d = self.cfg, self.cfg.noise, self.cfg.diffusion
        x0 = self.prepare(images, rng, cfg.data.hflip)
        # σ is drawn and snapped on the CPU, where the float64 grid lives: no device→host copy in the step.
        idx = sample_lognormal_grid_index(rng.randn("sigma", device="cpu"), self.grid, d.p_mean, d.p_std)
        sigma = self.grid[idx]
        if d.weighting == "grid":
            weight = diffusion_grid_weight(idx, d.grid_points, n.sigma_min, n.sigma_max, n.rho)
        elif d.weighting == "edm":
            weight = edm_weight(sigma, n.sigma_data)
        else:  # "uniform": λ = 1
            weight = torch.ones_like(sigma)
        dev = x0.device
        sigma_s = (sigma * cfg.sigma_shift).float().to(dev, non_blocking=True)
        eps = rng.randn("eps", *x0.shape[1:])
        x = x0 + sigma_s.view(-1, 1, 1, 1) * eps
        y = None
        if cfg.model.num_classes > 0:
            y = drop_labels(labels, rng.rand("label-drop"), d.label_dropout, cfg.model.num_classes)
        x0_hat = x0_prediction(self.net, x, sigma_s, y, n.sigma_data).float()
        mse = ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))
        loss = (weight.float().to(dev, non_blocking=True) * mse).mean()
        return loss, {"mse": mse.mean().detach()}
