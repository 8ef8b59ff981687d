"""Samplers of METHOD.md §6 checked against analytic denoisers.

Data x0 ~ N(μ, s²·I) under VE noise has the exact x0-predictor D(x, σ) = μ + s²/(s²+σ²)·(x − μ) and the
probability-flow ODE solution x(σ) = μ + sqrt((s²+σ²)/(s²+σ_T²))·(x_T − μ).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from epg.config import NoiseSettings
from epg.noise import karras_sigmas
from epg.sampling import (
    SAMPLER_NOISE_STREAM,
    balanced_labels,
    consistency_sample,
    consistency_sigmas,
    euler_sample,
    frequency_labels,
    guidance_interval,
    guided_denoiser,
    heun_sample,
    initial_noise,
    noise_generators,
    sampling_sigmas,
    stochastic_sample,
)

MU, S = 0.3, 0.5
NUM_CLASSES = 10
CLASS_MEANS = torch.linspace(-0.8, 0.8, NUM_CLASSES + 1)
CLASS_MEANS[-1] = 0.0  # the null label


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def gaussian_denoiser(x, sigma, labels):
    return MU + S**2 / (S**2 + _col(sigma) ** 2) * (x - MU)


def ode_solution(x_T, sigma_T, sigma):
    return MU + math.sqrt((S**2 + sigma**2) / (S**2 + sigma_T**2)) * (x_T - MU)


def class_denoiser(x, sigma, labels):
    """Exact denoiser of N(μ_y, s²) per class; the null label gets its own mean."""
    mu = _col(CLASS_MEANS[labels])
    return mu + S**2 / (S**2 + _col(sigma) ** 2) * (x - mu)


class Recorder:
    """Wraps a model and records (batch size, σ', labels) of every forward."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, sigma, labels):
        self.calls.append((x.shape[0], sigma.clone(), None if labels is None else labels.clone()))
        return self.model(x, sigma, labels)

    def sigmas_of(self, label):
        return [float(s[i]) for _, s, y in self.calls for i in range(len(y)) if int(y[i]) == label]


@pytest.fixture
def z():
    return initial_noise(4, (3, 4, 4), seed=0)


# ---------------------------------------------------------------------------------------------- grids

def test_sampling_sigmas_edm_and_official():
    noise = NoiseSettings()
    edm, official = sampling_sigmas(32, noise, "edm"), sampling_sigmas(32, noise, "official")
    assert len(edm) == 33 and edm[-1] == 0.0 and torch.equal(edm[:-1], official)
    assert official[0].item() == pytest.approx(80.0) and official[-1].item() == pytest.approx(0.002)
    with pytest.raises(ValueError):
        sampling_sigmas(32, noise, "ddim")


def test_guidance_interval_is_half_open():
    sigma = torch.tensor([0.19, 0.1901, 1.0, 1.61, 1.6101])
    assert guidance_interval(sigma).tolist() == [False, True, True, True, False]


# ------------------------------------------------------------------------------------------ ODE solvers

@pytest.mark.parametrize("grid", ["official", "edm"])
def test_heun_many_steps_reaches_exact_ode_solution(z, grid):
    sigmas = sampling_sigmas(256, NoiseSettings(), grid)
    x_T = 80.0 * z
    result = heun_sample(gaussian_denoiser, x_T, sigmas)
    exact = ode_solution(x_T.double(), 80.0, sigmas[-1].item())
    assert (result.x.double() - exact).abs().max().item() < 1e-3
    assert result.nfe == 2 * 256 - (1 if grid == "edm" else 2)


def _convergence_slope(sampler, z, steps=(16, 32, 64, 128)):
    errors = []
    for n in steps:
        sigmas = karras_sigmas(n + 1)
        x_T = 80.0 * z
        x = sampler(gaussian_denoiser, x_T, sigmas).x.double()
        errors.append((x - ode_solution(x_T.double(), 80.0, sigmas[-1].item())).abs().max().item())
    return np.polyfit(np.log(steps), np.log(errors), 1)[0]


def test_euler_is_first_order(z):
    assert _convergence_slope(euler_sample, z) == pytest.approx(-1.0, abs=0.1)


def test_heun_is_second_order(z):
    assert _convergence_slope(heun_sample, z) == pytest.approx(-2.0, abs=0.1)


def test_nfe_of_plain_samplers(z):
    sigmas = sampling_sigmas(32, NoiseSettings())
    assert heun_sample(gaussian_denoiser, 80 * z, sigmas).nfe == 63
    assert heun_sample(gaussian_denoiser, 80 * z, sigmas[:-1]).nfe == 62
    assert euler_sample(gaussian_denoiser, 80 * z, sigmas).nfe == 32


def test_clamp_applies_to_every_x0_prediction(z):
    seen = []

    def clamp(x0):
        seen.append(x0.dtype)
        return x0.clamp(-0.1, 0.1)

    result = heun_sample(gaussian_denoiser, 80 * z, sampling_sigmas(32, NoiseSettings()), clamp=clamp)
    assert len(seen) == result.nfe and set(seen) == {torch.float32}
    # The last step is Euler to σ = 0, whose result is the clamped x̂0 itself.
    assert result.x.abs().max().item() <= 0.1 + 1e-6


def test_loops_run_in_fp32_with_a_low_precision_model(z):
    def bf16_model(x, sigma, labels):
        assert x.dtype == sigma.dtype == torch.float32
        return gaussian_denoiser(x, sigma, labels).bfloat16()

    seen = []

    def clamp(x0):
        seen.append(x0.dtype)
        return x0

    result = heun_sample(bf16_model, 80 * z.double(), sampling_sigmas(8, NoiseSettings()), clamp=clamp)
    assert result.x.dtype == torch.float32 and set(seen) == {torch.float32}


def test_stochastic_without_churn_is_heun(z):
    sigmas = sampling_sigmas(16, NoiseSettings())
    heun = heun_sample(gaussian_denoiser, 80 * z, sigmas)
    sde = stochastic_sample(gaussian_denoiser, 80 * z, sigmas, generator=torch.Generator().manual_seed(0))
    assert torch.equal(heun.x, sde.x) and heun.nfe == sde.nfe


def test_stochastic_churn_step_matches_edm_formula():
    # With D ≡ 0 one step σ0 → σ1 maps x to x̂·σ1/σ̂, x̂ = x + sqrt(σ̂² − σ0²)·S_noise·ε, σ̂ = (1 + γ)·σ0.
    model = Recorder(lambda x, sigma, labels: torch.zeros_like(x))
    churn, s_noise, shift = 0.3, 1.007, 4.0
    sigma0, sigma1 = 2.0 * shift, 1.0 * shift
    x = torch.zeros(2, 1, 3, 3)
    result = stochastic_sample(model, x, [sigma0, sigma1], s_churn=churn, s_noise=s_noise, s_tmin=1.5,
                               s_tmax=2.5, shift=shift, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    sigma_hat = sigma0 * (1 + churn)
    expected = math.sqrt(sigma_hat**2 - sigma0**2) * s_noise * eps * sigma1 / sigma_hat
    torch.testing.assert_close(result.x, expected)
    assert model.calls[0][1][0].item() == pytest.approx(sigma_hat)
    # S_tmin/S_tmax are unshifted: the same step with σ0 outside [1.5, 2.5] takes no churn.
    gated = stochastic_sample(model, x, [sigma0, sigma1], s_churn=churn, s_tmin=1.5, s_tmax=1.9, shift=shift,
                              generator=torch.Generator().manual_seed(5))
    assert torch.equal(gated.x, torch.zeros_like(x))


def test_stochastic_per_sample_generators_split_invariant():
    z8 = initial_noise(8, (1, 4, 4), seed=3)
    sigmas = sampling_sigmas(8, NoiseSettings())

    def run(idx):
        return stochastic_sample(gaussian_denoiser, 80 * z8[idx], sigmas, s_churn=10.0,
                                 generator=noise_generators(3, idx, stream=SAMPLER_NOISE_STREAM)).x

    torch.testing.assert_close(run(list(range(8))), torch.cat([run([0, 1, 2, 3]), run([4, 5, 6, 7])]))


# ------------------------------------------------------------------------------------------------- CFG

def _cfg_run(grid, shift, scale=2.5):
    noise = NoiseSettings(shift=shift)
    sigmas = sampling_sigmas(32, noise, grid) * shift
    model = Recorder(class_denoiser)
    labels = torch.tensor([1, 7])
    z = initial_noise(2, (1, 4, 4), seed=1)
    denoiser = guided_denoiser(model, scale, NUM_CLASSES, shift=shift)
    result = heun_sample(denoiser, sigmas[0].item() * z, sigmas, labels=labels)
    return result, model


@pytest.mark.parametrize("grid, nfe", [("edm", 75), ("official", 74)])
@pytest.mark.parametrize("shift", [1.0, 4.0])
def test_guidance_exactly_at_grid_points_inside_the_unshifted_interval(grid, nfe, shift):
    result, model = _cfg_run(grid, shift)
    grid_points = karras_sigmas(32).tolist()
    inside = [s for s in grid_points if 0.19 < s <= 1.61]
    assert len(inside) == 6
    uncond = model.sigmas_of(NUM_CLASSES)
    # Heun evaluates each inside point twice (one step's correction, the next step's start), 2 samples each.
    assert sorted(uncond) == pytest.approx(sorted(4 * [shift * s for s in inside]), rel=1e-6)
    assert result.nfe == nfe
    # cond + uncond share one forward of the doubled batch.
    assert [b for b, _, _ in model.calls].count(4) == 12 and len(model.calls) == nfe - 12


def test_resolution_shift_reaches_the_network():
    _, model = _cfg_run("edm", 4.0)
    seen = sorted(set(round(float(s[0]), 6) for _, s, _ in model.calls))
    expected = sorted(set(round(4.0 * s, 6) for s in karras_sigmas(32).tolist()))
    assert seen == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, None])
def test_scale_one_is_plain_conditional_sampling(scale):
    guided, model = _cfg_run("edm", 4.0, scale=scale)
    strong, _ = _cfg_run("edm", 4.0, scale=2.5)
    sigmas = sampling_sigmas(32, NoiseSettings(shift=4.0)) * 4.0
    z = initial_noise(2, (1, 4, 4), seed=1)
    cond = heun_sample(class_denoiser, sigmas[0].item() * z, sigmas, labels=torch.tensor([1, 7]))
    assert torch.equal(guided.x, cond.x) and guided.nfe == cond.nfe == 63
    assert model.sigmas_of(NUM_CLASSES) == [] and not torch.equal(strong.x, cond.x)


def test_batched_guidance_equals_separate_forwards():
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 4, 9])
    null = torch.full_like(labels, NUM_CLASSES)
    w = 3.2
    guided = guided_denoiser(class_denoiser, w, NUM_CLASSES)
    for sigma, inside in [(0.7, True), (5.0, False), (0.1, False)]:
        s = torch.full((3,), sigma)
        cond, uncond = class_denoiser(x, s, labels), class_denoiser(x, s, null)
        expected = uncond + w * (cond - uncond) if inside else cond
        torch.testing.assert_close(guided(x, s, labels), expected, rtol=1e-6, atol=1e-6)
    assert guided.nfe == 2 + 1 + 1


# ----------------------------------------------------------------------------------------- consistency

def _gaussian_consistency(sigma_min):
    def f(x, sigma, labels):
        return MU + torch.sqrt((S**2 + sigma_min**2) / (S**2 + _col(sigma) ** 2)) * (x - MU)
    return f


def test_one_step_consistency_moments():
    noise = NoiseSettings(shift=4.0)
    sigmas = consistency_sigmas(noise, noise.shift)
    sigma_min = noise.sigma_min * noise.shift
    z = initial_noise(4096, (1, 4, 4), seed=0)
    result = consistency_sample(_gaussian_consistency(sigma_min), z, sigmas, sigma_min)
    assert sigmas == [320.0] and result.nfe == 1
    assert result.x.mean().item() == pytest.approx(MU, abs=0.01)
    assert result.x.std().item() == pytest.approx(math.sqrt(S**2 + sigma_min**2), rel=0.02)


def test_multistep_consistency_renoises_to_sigma_mid():
    # A large σ_min makes the "sqrt(σ_mid² − σ_min²)" re-noising distinguishable from plain σ_mid.
    sigma_min = 0.2
    z = initial_noise(4096, (1, 4, 4), seed=0)
    gens = noise_generators(0, range(4096), stream=SAMPLER_NOISE_STREAM)
    f = _gaussian_consistency(sigma_min)
    result = consistency_sample(f, z, [80.0, 0.5, 0.3], sigma_min, generator=gens)
    assert result.nfe == 3
    assert result.x.mean().item() == pytest.approx(MU, abs=0.01)
    assert result.x.std().item() == pytest.approx(math.sqrt(S**2 + sigma_min**2), rel=0.01)


def test_consistency_sigmas_are_shifted():
    assert consistency_sigmas(NoiseSettings(shift=4.0), 4.0, [0.8]) == [320.0, 3.2]


# ---------------------------------------------------------------------------------------- labels, seeds

@pytest.mark.parametrize("num, classes", [(1000, 10), (50_000, 1000)])
def test_balanced_labels_are_balanced(num, classes):
    labels = balanced_labels(num, classes, seed=0)
    assert torch.equal(torch.bincount(labels, minlength=classes), torch.full((classes,), num // classes))
    assert torch.equal(labels, balanced_labels(num, classes, seed=0))
    assert not torch.equal(labels, balanced_labels(num, classes, seed=1))
    assert not torch.equal(labels, labels.sort().values)


def test_balanced_labels_remainder_as_even_as_possible():
    counts = torch.bincount(balanced_labels(1005, 10, seed=0), minlength=10)
    assert counts.sum() == 1005 and sorted(counts.tolist()) == [100] * 5 + [101] * 5


def test_frequency_labels_follow_class_counts():
    labels = frequency_labels(30_000, [100, 300, 600], seed=0)
    freq = torch.bincount(labels, minlength=3).double() / 30_000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), atol=0.015, rtol=0)
    assert torch.equal(labels, frequency_labels(30_000, [100, 300, 600], seed=0))


def test_initial_noise_depends_only_on_seed_and_index():
    whole = initial_noise(8, (3, 4, 4), seed=7, indices=range(8))
    parts = torch.cat([initial_noise(8, (3, 4, 4), 7, [0, 1, 2, 3]),
                       initial_noise(8, (3, 4, 4), 7, [4, 5, 6, 7])])
    assert torch.equal(whole, parts)
    assert torch.equal(whole, initial_noise(8, (3, 4, 4), seed=7))
    assert torch.equal(whole[5:6], initial_noise(8, (3, 4, 4), 7, [5]))
    assert not torch.equal(whole, initial_noise(8, (3, 4, 4), seed=8))
    assert not torch.equal(whole[0], whole[1])
    with pytest.raises(ValueError):
        initial_noise(8, (3, 4, 4), 7, [8])
