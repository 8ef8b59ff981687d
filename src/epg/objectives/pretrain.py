"""Stage 1: contrastive + representation-consistency pre-training of the encoder (METHOD.md §3)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from epg.config import Config
from epg.dist import gather_cat, rank
from epg.nn import encode
from epg.noise import add_noise, discretization_steps, karras_sigmas
from epg.objectives.augment import ViewSpec, augment_view
from epg.objectives.base import Objective
from epg.pixels import normalize
from epg.rng import SampleRNG

# True: both contrastive views go through the encoder as one batch of 2B (the outputs agree with two calls to float
# rounding, tests/test_pretrain.py). Measured slower on CPU (benchmarks/results/pretrain_views.md, fmnist-tiny batch
# 64, 1 thread: 0.98× in bf16, 0.92× in fp32 — the larger activations cost more than the saved calls), so off.
BATCH_VIEWS = False


def info_nce(q: torch.Tensor, k: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Per-query InfoNCE ℓ(q_i) = logsumexp_j(q_i·k_j/τ) − q_i·k_i/τ with keys gathered from every process.

    q, k: (B_local, D), already normalised; k carries no gradient. Row i's positive is this process's
    i-th key inside the gathered (global) key matrix. Computed in fp32 (METHOD.md §3 item 4).
    """
    with torch.autocast(q.device.type, enabled=False):  # autocast would run the logits matmul in bf16
        q, k = q.float(), k.detach().float()
        keys = gather_cat(k)
        offset = rank() * k.shape[0]
        tau = torch.as_tensor(tau, dtype=torch.float32, device=q.device).reshape(-1, 1)
        logits = q @ keys.T / tau
        rows = torch.arange(q.shape[0], device=q.device)
        return torch.logsumexp(logits, dim=1) - logits[rows, offset + rows]


def symmetric_contrastive_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor,
                               tau: float) -> torch.Tensor:
    """ℓ(q1; k2) + ℓ(q2; k1), each averaged over the batch: the two directions of METHOD.md §3 item 4."""
    return info_nce(q1, k2, tau).mean() + info_nce(q2, k1, tau).mean()


def representation_consistency_loss(q: torch.Tensor, k: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """InfoNCE between h(x_{σ_n}) and the no-grad h(x_{σ_n+1}) of the same trajectory (METHOD.md §3 item 5)."""
    return info_nce(q, k, tau).mean()


def tau2_at(step: int, total_steps: int, schedule: str = "cosine", constant: float = 0.1) -> float:
    """τ2(k) = 0.2 − 0.1·sin(3πk/(4K)) for k ≤ 2K/3, then 0.1 — or a constant (METHOD.md §3 item 5)."""
    if schedule == "constant":
        return constant
    if step <= 2 * total_steps / 3:
        return 0.2 - 0.1 * math.sin(3 * math.pi * step / (4 * total_steps))
    return 0.1


def consistency_tau(sigma_noisier: torch.Tensor, tau1: float, tau2: float, sigma_min: float = 0.002,
                    sigma_max: float = 80.0) -> torch.Tensor:
    """τ(t) = τ1·(1 − t) + τ2·t with t = (σ_n − σ_min)/(σ_max − σ_min), unshifted σ (METHOD.md §3 item 5)."""
    t = (sigma_noisier - sigma_min) / (sigma_max - sigma_min)
    return tau1 * (1 - t) + tau2 * t


def contrastive_views(cfg: Config) -> tuple[ViewSpec, ViewSpec]:
    """The two contrastive views' augmentations as `cfg.pretrain` sets them (view 1 always blurred, view 2 not)."""
    p = cfg.pretrain
    extra = dict(grey_jitter_p=p.grey_jitter_p, grey_strength=p.grey_strength, erase_p=p.erase_p)
    return (ViewSpec("view1", p.blur_p1, 0.0, p.crop_min_scale, **extra),
            ViewSpec("view2", p.blur_p2, p.solarize_p2, p.crop_min_scale, **extra))


class PretrainObjective(Objective):
    """Symmetric contrastive loss (EMA teacher) + representation consistency along one noising trajectory."""

    stage = "pretrain"

    def __init__(self, cfg: Config, net: nn.Module):
        super().__init__(cfg, net)
        self.teacher = copy.deepcopy(net)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.views = contrastive_views(cfg)

    def _encode(self, net: nn.Module, x: torch.Tensor, sigma_shifted: torch.Tensor, projector: bool) -> torch.Tensor:
        h = encode(net, x, sigma_shifted, self.cfg.noise.sigma_data)
        return F.normalize((net.projector(h) if projector else h).float(), dim=-1)

    def _encode_views(self, net: nn.Module, y1: torch.Tensor, y2: torch.Tensor, sigma_shifted: torch.Tensor,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected, normalised features of both views. The encoder sees them as one batch of 2B (its per-sample
        maths does not mix samples); the projector's BatchNorm sees each view's B alone, as two calls would."""
        if not BATCH_VIEWS:
            return self._encode(net, y1, sigma_shifted, True), self._encode(net, y2, sigma_shifted, True)
        h1, h2 = encode(net, torch.cat([y1, y2]), sigma_shifted.repeat(2), self.cfg.noise.sigma_data).chunk(2)
        return (F.normalize(net.projector(h1).float(), dim=-1), F.normalize(net.projector(h2).float(), dim=-1))

    def grid_pair(self, rng: SampleRNG, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Adjacent (σ_n, σ_{n+1}) of the curriculum grid; one index per global step by default (§3 item 1)."""
        cfg, p = self.cfg, self.cfg.pretrain
        n_points = discretization_steps(step, cfg.train.steps, p.s0, p.s1)
        grid = karras_sigmas(n_points, cfg.noise.sigma_min, cfg.noise.sigma_max, cfg.noise.rho)
        if p.per_sample_index:
            n = (rng.rand("grid-index", device="cpu") * (n_points - 1)).long().clamp(max=n_points - 2)
        else:  # the same draw on every process: seeded by (seed, step) only, so no broadcast is needed
            n = torch.randint(0, n_points - 1, (1,), generator=rng.step_generator("grid-index")).expand(batch)
        return grid[n], grid[n + 1]

    @staticmethod
    def batch_noise(rng: SampleRNG, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """One ε for every sample of the global batch (seeded by the step only): then ε tells no image apart from
        another, and matching x_{σ_n} to x_{σ_n+1} has to go by the image (pretrain.consistency_noise = batch)."""
        return torch.randn(tuple(shape), generator=rng.step_generator("eps-batch")).to(device)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, rng: SampleRNG, step: int,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, p, s = self.cfg, self.cfg.pretrain, self.cfg.sigma_shift
        dev = images.device
        eps = rng.randn("eps", *images.shape[1:])
        zero = torch.zeros((), device=dev)
        loss_cons = loss_con = zero
        if p.consistency_weight:  # two adjacent points of one trajectory (same image, same ε)
            x0 = self.prepare(images, rng, cfg.data.hflip)
            t_n, t_n1 = self.grid_pair(rng, step, images.shape[0])
            tn_s, tn1_s = (t_n * s).float().to(dev), (t_n1 * s).float().to(dev)
            use_proj = p.consistency_features == "projector"
            e = eps if p.consistency_noise == "sample" else self.batch_noise(rng, images.shape[1:], dev)
            q = self._encode(self.net, add_noise(x0, tn_s, e), tn_s, use_proj)
            with torch.no_grad():
                k = self._encode(self.net, add_noise(x0, tn1_s, e), tn1_s, use_proj)
            tau = consistency_tau(t_n.float(), p.tau1,
                                  tau2_at(step, cfg.train.steps, p.tau2_schedule, p.tau2_constant),
                                  cfg.noise.sigma_min, cfg.noise.sigma_max).to(dev)
            loss_cons = representation_consistency_loss(q, k, tau)
        if p.contrastive_weight:  # two strong views at the lowest noise level, EMA teacher keys, symmetric
            y1, y2 = (normalize(augment_view(images, rng, v) * 255.0, cfg.noise.normalization) for v in self.views)
            t0 = torch.full((images.shape[0],), cfg.noise.sigma_min * s, device=dev)
            y1, y2 = add_noise(y1, t0, eps), add_noise(y2, t0, eps)
            q1, q2 = self._encode_views(self.net, y1, y2, t0)
            with torch.no_grad():
                k1, k2 = self._encode_views(self.teacher, y1, y2, t0)
            loss_con = symmetric_contrastive_loss(q1, q2, k1, k2, p.tau_c)
        loss = p.contrastive_weight * loss_con + p.consistency_weight * loss_cons
        return loss, {"contrastive": loss_con.detach(), "consistency": loss_cons.detach()}

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """θ⁻ ← m·θ⁻ + (1 − m)·θ (momentum 0.99; METHOD.md §2)."""
        m = self.cfg.pretrain.teacher_momentum
        teacher = list(self.teacher.parameters())
        torch._foreach_lerp_(teacher, [q.detach() for q in self.net.parameters()], 1.0 - m)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}
