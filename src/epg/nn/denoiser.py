"""The network as a denoiser (EDM2's `Precond`): how σ′ and x_σ reach the network and what comes back.

σ′ is the shifted σ (METHOD.md §1). Each function here is the one place its formula is written: x0 prediction
(§4), the consistency function (§1, §5), encode-at-σ′ (the stage-1 representation, §3) and the time embedding.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from epg.noise import SIGMA_DATA, c_in, c_noise, c_out, c_skip


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoid of c_noise, cos half then sin half, max period 1e4 (METHOD.md §1); computed in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def encode(net: nn.Module, x: torch.Tensor, sigma_shifted: torch.Tensor, sigma_data: float = SIGMA_DATA,
           ) -> torch.Tensor:
    """h = LN(CLS) of E(c_in·x_σ, c_noise) for a per-sample σ′ (any network with `features`, METHOD.md §3)."""
    s = sigma_shifted.float()
    return net.features(c_in(s.view(-1, 1, 1, 1), sigma_data) * x, c_noise(s))


def x0_prediction(net: nn.Module, x: torch.Tensor, sigma_shifted: torch.Tensor, labels: torch.Tensor | None,
                  sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """x̂0 = G(c_in·x_σ, c_noise, y): the model predicts x0 directly (METHOD.md §4)."""
    s = sigma_shifted.float().view(-1, 1, 1, 1)
    return net(c_in(s, sigma_data) * x, c_noise(sigma_shifted.float()), labels)


def consistency_function(net: nn.Module, x: torch.Tensor, sigma_shifted: torch.Tensor, labels: torch.Tensor | None,
                         sigma_min_shifted: float, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """f(x, σ') = c_skip·x + c_out·F(c_in·x, c_noise, y); f(x, σ'_min) = x exactly (METHOD.md §1)."""
    s = sigma_shifted.float()
    col = s.view(-1, 1, 1, 1)
    out = net(c_in(col, sigma_data) * x, c_noise(s), labels).float()
    return c_skip(col, sigma_min_shifted, sigma_data) * x + c_out(col, sigma_min_shifted, sigma_data) * out


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a precision name: fp32 (none), bf16 or fp16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)
