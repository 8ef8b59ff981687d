"""Stage 2b: ECT-style consistency tuning with the auxiliary representation loss (METHOD.md §5)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from epg.config import Config, ModelConfig
from epg.nn import consistency_function, encode
from epg.noise import add_noise, ect_r_of_t, ect_stage, ect_t, ect_weight
from epg.objectives.base import Objective
from epg.objectives.pretrain import info_nce
from epg.rng import SampleRNG


def pseudo_huber_term(d2: torch.Tensor, c: float) -> torch.Tensor:
    """d²/sqrt(sg(d²) + c²): its gradient is twice pseudo-Huber's, sqrt(d² + c²) − c (METHOD.md §5)."""
    return d2 / torch.sqrt(d2.detach() + c * c)


class ConsistencyObjective(Objective):
    """‖f_θ(x_t, t') − sg f_θ(x_r, r')‖ (same weights, same dropout mask) + InfoNCE through a frozen W."""

    stage = "consistency"

    def __init__(self, cfg: Config, net: nn.Module, frozen: nn.Module | None = None,
                 frozen_model: ModelConfig | None = None):
        super().__init__(cfg, net)
        self.frozen = frozen
        self.frozen_model = frozen_model  # W's shape, saved so that a resume can rebuild it
        if frozen is not None:
            frozen.requires_grad_(False)
            frozen.eval()

    def extra_modules(self) -> dict[str, nn.Module]:
        # The frozen stage-1 network travels with every checkpoint: a resume never rereads --init (an imported
        # checkpoint has none: W then came from --init).
        return {"frozen": self.frozen} if self.frozen is not None else {}

    def extra_meta(self) -> dict:
        return {"frozen_model": dataclasses.asdict(self.frozen_model)} if self.frozen_model is not None else {}

    def train(self, mode: bool = True) -> ConsistencyObjective:
        super().train(mode)
        if self.frozen is not None:  # W is a fixed feature extractor: its BN uses running statistics
            self.frozen.eval()
        return self

    def _f(self, x: torch.Tensor, sigma_s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        n = self.cfg.noise
        return consistency_function(self.net, x, sigma_s, labels, n.sigma_min * self.cfg.sigma_shift, n.sigma_data)

    def _w_features(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        s = torch.full((x.shape[0],), cfg.noise.sigma_min * cfg.sigma_shift, device=x.device)
        h = encode(self.frozen, x, s, cfg.noise.sigma_data)
        if cfg.consistency.aux_features == "projector":
            h = self.frozen.projector(h)
        return F.normalize(h.float(), dim=-1)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, rng: SampleRNG, step: int,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, c = self.cfg, self.cfg.consistency
        n, s = cfg.noise, cfg.sigma_shift
        x0 = self.prepare(images, rng, cfg.data.hflip)
        t = ect_t(rng.randn("t"), c.p_mean, c.p_std, n.sigma_min)
        r = ect_r_of_t(t, ect_stage(step, c.stage_length), c.q, c.k, c.b, n.sigma_min)
        t_s, r_s = (t * s).float(), (r * s).float()
        eps = rng.randn("eps", *x0.shape[1:])
        y = labels if cfg.model.num_classes > 0 else None
        devices = [x0.device] if x0.device.type == "cuda" else []
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(x0.device) if devices else None
        f_t = self._f(add_noise(x0, t_s, eps), t_s, y)
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu_state)  # the target pass reuses the online pass's dropout mask
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, x0.device)
            f_r = self._f(add_noise(x0, r_s, eps), r_s, y)
        d2 = ((f_t - f_r) ** 2).sum(dim=(1, 2, 3))
        loss_cm = (ect_weight(t_s, r_s, c.weighting) * pseudo_huber_term(d2, c.huber_c)).mean()
        terms = {"cm": loss_cm.detach()}
        loss = loss_cm
        if self.frozen is not None and c.aux_weight > 0:
            with torch.no_grad():
                key = self._w_features(x0)
            aux = info_nce(self._w_features(f_t), key, c.aux_tau).mean()
            loss = loss + c.aux_weight * aux
            terms["aux"] = aux.detach()
        return loss, terms
