"""Every noise formula of METHOD.md §1 (plus the σ samplers of §4 and §5), each in one function.

Conventions: σ values handed to these functions are *unshifted* unless the name says otherwise; the
resolution shift s (`epg.config.resolution_shift`, H/64 by default) multiplies a σ right before it reaches
the network or the forward process (METHOD.md §1).
"""

from __future__ import annotations

import math

import torch

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
SIGMA_DATA = 0.5


def add_noise(x0: torch.Tensor, sigma_shifted: torch.Tensor | float, eps: torch.Tensor) -> torch.Tensor:
    """Forward process x_σ = x0 + σ'·ε with one σ' or one per sample (METHOD.md §1)."""
    if isinstance(sigma_shifted, torch.Tensor):
        sigma_shifted = _per_sample(sigma_shifted, x0)
    return x0 + sigma_shifted * eps


def c_in(sigma_shifted: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """Input scale c_in = 1/sqrt(σ'² + σ_d²) (METHOD.md §1)."""
    return 1.0 / torch.sqrt(sigma_shifted**2 + sigma_data**2)


def c_noise(sigma_shifted: torch.Tensor) -> torch.Tensor:
    """Noise conditioning c_noise = 250·ln σ' (METHOD.md §1)."""
    return 250.0 * torch.log(sigma_shifted)


def c_skip(sigma_shifted: torch.Tensor, sigma_min_shifted: float, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """CM skip scale σ_d²/((σ' − σ'_min)² + σ_d²); equals 1 at σ'_min (METHOD.md §1)."""
    return sigma_data**2 / ((sigma_shifted - sigma_min_shifted) ** 2 + sigma_data**2)


def c_out(sigma_shifted: torch.Tensor, sigma_min_shifted: float, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """CM output scale (σ' − σ'_min)·σ_d/sqrt(σ'² + σ_d²); equals 0 at σ'_min (METHOD.md §1)."""
    return (sigma_shifted - sigma_min_shifted) * sigma_data / torch.sqrt(sigma_shifted**2 + sigma_data**2)


def karras_sigma_at(i: torch.Tensor | float, n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                    rho: float = RHO) -> torch.Tensor | float:
    """The Karras curve at (possibly out-of-range) index i of an n-point grid (METHOD.md §1)."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + i / (n - 1) * (lo - hi)) ** rho


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Karras grid σ_0 = σ_max > … > σ_{n−1} = σ_min (METHOD.md §1), unshifted."""
    if n < 2:
        raise ValueError(f"a Karras grid needs at least 2 points, got {n}")
    i = torch.arange(n, dtype=torch.float64)
    return karras_sigma_at(i, n, sigma_min, sigma_max, rho).to(dtype)


def discretization_steps(k: int, total_steps: int, s0: int = 20, s1: int = 1280) -> int:
    """iCT doubling curriculum N(k) = min(s0·2^ceil(k/K'), s1) + 1 (METHOD.md §1)."""
    k_prime = math.ceil(total_steps / math.log2(math.ceil(s1 / s0) + 1))
    doublings = -(-k // k_prime)  # integer ceil(k / K'), exact for large k
    return min(s0 * 2**doublings, s1) + 1


def snap_to_grid(sigma: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index of the nearest grid point for each σ (METHOD.md §4)."""
    return torch.argmin((sigma[:, None].double() - grid[None].double()).abs(), dim=1)


def sample_lognormal_grid_index(u: torch.Tensor, grid: torch.Tensor, p_mean: float = -1.2,
                                p_std: float = 1.6) -> torch.Tensor:
    """Grid index of σ ~ LogNormal(P_mean, P_std) snapped to the grid (METHOD.md §4); u are N(0,1) draws."""
    return snap_to_grid(torch.exp(p_mean + p_std * u.double()), grid)


def diffusion_grid_weight(i: torch.Tensor, n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                          rho: float = RHO) -> torch.Tensor:
    """λ(σ_i) = 1/(σ_i − σ_{i+1}) on the n-point grid, unshifted (METHOD.md §4).

    For the last index σ_{i+1} is the Karras curve continued one point beyond σ_min (i = n in the
    formula), which keeps the weight continuous: ≈ 2.6e4 at σ_min for n = 1280.
    """
    i = i.double()
    return 1.0 / (karras_sigma_at(i, n, sigma_min, sigma_max, rho) - karras_sigma_at(i + 1, n, sigma_min,
                                                                                      sigma_max, rho))


def edm_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """EDM loss weighting λ = (σ² + σ_d²)/(σ·σ_d)² — the option of METHOD.md §4."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def ect_stage(step: int, stage_length: int) -> int:
    """ECT stage = 1 + floor(step / stage_length) (METHOD.md §5)."""
    return 1 + step // stage_length


def ect_t(u: torch.Tensor, p_mean: float = -0.4, p_std: float = 1.6, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """ECT t = max(exp(N(P_mean, P_std²)), 0.002), unshifted (METHOD.md §5); u are N(0,1) draws."""
    return torch.clamp(torch.exp(p_mean + p_std * u), min=sigma_min)


def ect_r_of_t(t: torch.Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0,
               sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """ECT r = max(t·(1 − q^−stage·(1 + k·sigmoid(−b·t))), 0.002), unshifted (METHOD.md §5)."""
    ratio = 1.0 - q ** (-stage) * (1.0 + k * torch.sigmoid(-b * t))
    return torch.clamp(t * ratio, min=sigma_min)


def ect_weight(t_shifted: torch.Tensor, r_shifted: torch.Tensor, kind: str = "ect") -> torch.Tensor:
    """CM loss weight where t' > r' (0 elsewhere): 1/(t' − r') for "ect" (METHOD.md §5), 1 for "uniform"."""
    gap = t_shifted > r_shifted
    if kind == "ect":
        return torch.where(gap, 1.0 / (t_shifted - r_shifted).clamp_min(1e-12), torch.zeros_like(t_shifted))
    return gap.float()


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
