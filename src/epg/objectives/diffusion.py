"""Stage 2a: x0-prediction diffusion fine-tuning (METHOD.md §4)."""

from __future__ import annotations

import torch
from torch import nn

from epg.config import Config
from epg.nn import x0_prediction
from epg.noise import add_noise, diffusion_grid_weight, edm_weight, karras_sigmas, sample_lognormal_grid_index
from epg.objectives.base import Objective
from epg.rng import SampleRNG


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
        if d.weight_cap > 0:  # not in the paper: bounds how far the lowest-σ samples of a batch outweigh the rest
            weight = weight.clamp(max=d.weight_cap)
        dev = x0.device
        sigma_s = (sigma * cfg.sigma_shift).float().to(dev, non_blocking=True)
        eps = rng.randn("eps", *x0.shape[1:])
        x = add_noise(x0, sigma_s, eps)
        y = None
        if cfg.model.num_classes > 0:
            y = drop_labels(labels, rng.rand("label-drop"), d.label_dropout, cfg.model.num_classes)
        x0_hat = x0_prediction(self.net, x, sigma_s, y, n.sigma_data).float()
        mse = ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))
        loss = (weight.float().to(dev, non_blocking=True) * mse).mean()
        return loss, {"mse": mse.mean().detach()}
