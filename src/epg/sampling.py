"""Samplers of METHOD.md §6: EDM Heun/Euler/stochastic ODE samplers, interval CFG, consistency sampling,
evaluation labels and per-sample seeded noise.

Everything works on plain callables so it can be checked against analytic denoisers:
a *denoiser* is ``D(x[B,C,H,W], sigma_shifted[B], labels[B] | None) -> x̂0`` (x0 prediction in network space),
a *consistency function* has the same signature and returns f(x, σ'). σ values handed to the samplers are
already shifted (σ' = s·σ, METHOD.md §1); grids, the guidance interval and S_tmin/S_tmax are given unshifted.
The loops run in fp32 whatever precision the network computes in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from epg.config import NoiseSettings
from epg.noise import karras_sigmas
from epg.rng import mix_seed

Denoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]
Clamp = Callable[[Tensor], Tensor]
Sigmas = Tensor | Sequence[float]
Generators = torch.Generator | Sequence[torch.Generator] | None

GRIDS = ("edm", "official")
GUIDANCE_INTERVAL = (0.19, 1.61)
INITIAL_NOISE_STREAM = 0
SAMPLER_NOISE_STREAM = 1


@dataclass
class SampleResult:
    """Final sample and the number of network evaluations it took (NFE, METHOD.md §6)."""

    x: Tensor
    nfe: int


# ----------------------------------------------------------------------------------------------- grids

def sampling_sigmas(num_steps: int, noise: NoiseSettings, grid: str = "edm") -> Tensor:
    """Unshifted σ of the ODE samplers: num_steps-point Karras grid, then σ = 0 for "edm" (METHOD.md §6)."""
    sigmas = karras_sigmas(num_steps, noise.sigma_min, noise.sigma_max, noise.rho)
    if grid == "edm":
        return torch.cat([sigmas, sigmas.new_zeros(1)])
    if grid == "official":
        return sigmas
    raise ValueError(f"unknown sampling grid {grid!r}; choose one of {GRIDS}")


def consistency_sigmas(noise: NoiseSettings, shift: float, mids: Sequence[float] = ()) -> list[float]:
    """Shifted σ' list [σ'_max, σ'_mid…] of consistency sampling from unshifted mid-points (METHOD.md §6)."""
    return [shift * s for s in (noise.sigma_max, *mids)]


def guidance_interval(sigma_unshifted: Tensor, lo: float = GUIDANCE_INTERVAL[0],
                      hi: float = GUIDANCE_INTERVAL[1]) -> Tensor:
    """True where CFG applies: unshifted σ ∈ (lo, hi] (METHOD.md §6)."""
    return (sigma_unshifted > lo) & (sigma_unshifted <= hi)


# ------------------------------------------------------------------------------------------- denoisers

class CountedDenoiser:
    """A denoiser that counts its network evaluations of the batch (NFE, METHOD.md §6)."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model
        self.nfe = 0

    def __call__(self, x: Tensor, sigma_shifted: Tensor, labels: Tensor | None) -> Tensor:
        self.nfe += 1
        return self.model(x, sigma_shifted, labels)


class GuidedDenoiser(CountedDenoiser):
    """Interval CFG x̂_u + w·(x̂_c − x̂_u), cond and uncond in one batched forward (METHOD.md §6)."""

    def __init__(self, model: Denoiser, scale: float, null_label: int, shift: float = 1.0,
                 interval: tuple[float, float] = GUIDANCE_INTERVAL) -> None:
        super().__init__(model)
        self.scale = scale
        self.null_label = null_label
        self.shift = shift
        self.interval = interval

    def __call__(self, x: Tensor, sigma_shifted: Tensor, labels: Tensor | None) -> Tensor:
        if labels is None:
            raise ValueError("classifier-free guidance needs class labels")
        inside = guidance_interval(sigma_shifted / self.shift, *self.interval)
        if not bool(inside.any()):
            return super().__call__(x, sigma_shifted, labels)
        self.nfe += 2
        both = self.model(torch.cat([x, x]), torch.cat([sigma_shifted, sigma_shifted]),
                          torch.cat([labels, torch.full_like(labels, self.null_label)]))
        cond, uncond = both.float().chunk(2)
        guided = uncond + self.scale * (cond - uncond)
        # Samplers give the whole batch one σ; the mask only matters for callers mixing σ per sample.
        return torch.where(inside.view(-1, *([1] * (x.ndim - 1))), guided, cond)


def guided_denoiser(model: Denoiser, scale: float | None, null_label: int, shift: float = 1.0,
                    interval: tuple[float, float] = GUIDANCE_INTERVAL) -> CountedDenoiser:
    """Conditional model → interval-CFG denoiser; w ∈ {None, 1} runs no unconditional pass (METHOD.md §6)."""
    if scale is None or scale == 1.0:
        return CountedDenoiser(model)
    return GuidedDenoiser(model, scale, null_label, shift, interval)


def _counted(denoiser: Denoiser) -> CountedDenoiser:
    return denoiser if isinstance(denoiser, CountedDenoiser) else CountedDenoiser(denoiser)


def _denoise(denoiser: CountedDenoiser, x: Tensor, sigma: float, labels: Tensor | None,
             clamp: Clamp | None) -> Tensor:
    x0 = denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device), labels).float()
    return clamp(x0) if clamp is not None else x0


# ------------------------------------------------------------------------------------------ ODE / SDE

@torch.no_grad()
def euler_sample(denoiser: Denoiser, x_T: Tensor, sigmas_shifted: Sigmas, *,
                 labels: Tensor | None = None, clamp: Clamp | None = None) -> SampleResult:
    """Euler steps of the probability-flow ODE dx/dσ = (x − D(x, σ))/σ (METHOD.md §6)."""
    d = _counted(denoiser)
    start = d.nfe
    sigmas = torch.as_tensor(sigmas_shifted, dtype=torch.float64).tolist()
    x = x_T.float()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (sigma_next - sigma) * (x - _denoise(d, x, sigma, labels, clamp)) / sigma
    return SampleResult(x, d.nfe - start)


@torch.no_grad()
def stochastic_sample(denoiser: Denoiser, x_T: Tensor, sigmas_shifted: Sigmas, *,
                      labels: Tensor | None = None, clamp: Clamp | None = None, s_churn: float = 0.0,
                      s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0, shift: float = 1.0,
                      generator: Generators = None) -> SampleResult:
    """EDM Algorithm 2: churned Heun steps, Euler for the step to σ = 0 (METHOD.md §6).

    s_tmin/s_tmax are unshifted like every other σ setting; ``generator`` draws the churn noise, one
    generator per sample to keep a split run identical to a single one.
    """
    d = _counted(denoiser)
    start = d.nfe
    sigmas = torch.as_tensor(sigmas_shifted, dtype=torch.float64).tolist()
    gamma_max = min(s_churn / (len(sigmas) - 1), math.sqrt(2.0) - 1.0)
    x = x_T.float()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        gamma = gamma_max if s_tmin <= sigma / shift <= s_tmax else 0.0
        sigma_hat = sigma * (1.0 + gamma)
        if gamma > 0.0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * _randn_like(x, generator)
        slope = (x - _denoise(d, x, sigma_hat, labels, clamp)) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * slope
        if sigma_next != 0.0:
            slope_next = (x_next - _denoise(d, x_next, sigma_next, labels, clamp)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (slope + slope_next)
        x = x_next
    return SampleResult(x, d.nfe - start)


def heun_sample(denoiser: Denoiser, x_T: Tensor, sigmas_shifted: Sigmas, *,
                labels: Tensor | None = None, clamp: Clamp | None = None) -> SampleResult:
    """Deterministic EDM Heun sampler = Algorithm 2 without churn (METHOD.md §6)."""
    return stochastic_sample(denoiser, x_T, sigmas_shifted, labels=labels, clamp=clamp)


# ------------------------------------------------------------------------------------------ consistency

@torch.no_grad()
def consistency_sample(f: Denoiser, z: Tensor, sigmas_shifted: Sigmas, sigma_min_shifted: float,
                       *, labels: Tensor | None = None, clamp: Clamp | None = None,
                       generator: Generators = None) -> SampleResult:
    """x̂ = f(σ'_max·z, σ'_max), then re-noise to each σ'_mid and apply f again (METHOD.md §6)."""
    d = _counted(f)
    start = d.nfe
    sigmas = [float(s) for s in sigmas_shifted]
    x = _denoise(d, sigmas[0] * z.float(), sigmas[0], labels, clamp)
    for sigma in sigmas[1:]:
        # f(·, σ'_min) is the identity, so x̂ already carries σ'_min of noise: add only the rest (CM paper).
        x_noisy = x + math.sqrt(sigma**2 - sigma_min_shifted**2) * _randn_like(x, generator)
        x = _denoise(d, x_noisy, sigma, labels, clamp)
    return SampleResult(x, d.nfe - start)


# -------------------------------------------------------------------------------------- labels & seeds

def balanced_labels(num: int, num_classes: int, seed: int) -> Tensor:
    """Class-balanced evaluation labels, shuffled with the seed (METHOD.md §6)."""
    g = torch.Generator().manual_seed(seed)
    # When num is not a multiple of num_classes, the leftover labels go to distinct random classes.
    labels = torch.cat([torch.arange(num_classes).repeat(num // num_classes),
                        torch.randperm(num_classes, generator=g)[: num % num_classes]])
    return labels[torch.randperm(num, generator=g)]


def frequency_labels(num: int, class_counts: Sequence[int] | Tensor, seed: int) -> Tensor:
    """Evaluation labels drawn i.i.d. by training-set class frequency — the option of METHOD.md §6."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.as_tensor(class_counts, dtype=torch.float64)
    return torch.multinomial(weights, num, replacement=True, generator=g)


def noise_generators(seed: int, indices: Sequence[int],
                     stream: int = INITIAL_NOISE_STREAM) -> list[torch.Generator]:
    """One CPU generator per sample i, seeded from (seed, stream, i) only (METHOD.md §6).

    Streams keep the initial noise and the sampler's later noise of the same sample independent.
    """
    return [torch.Generator().manual_seed(mix_seed(seed, "sampling", stream, int(i))) for i in indices]


def initial_noise(num_total: int, shape: Sequence[int], seed: int,
                  indices: Sequence[int] | None = None) -> Tensor:
    """z[i] ~ N(0, I) from (seed, i) alone: any split of the indices gives the same z (METHOD.md §6)."""
    indices = range(num_total) if indices is None else indices
    if any(not 0 <= i < num_total for i in indices):
        raise ValueError(f"sample indices must lie in [0, {num_total})")
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in noise_generators(seed, indices)])


def _randn_like(x: Tensor, generator: Generators) -> Tensor:
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=generator.device).to(x)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack([torch.randn(x.shape[1:], generator=g) for g in generator]).to(x)
