"""Hand-computed values for every formula of METHOD.md §1 (and the σ samplers of §4, §5)."""

import math

import pytest
import torch

from epg import noise
from epg.config import resolution_shift
from epg.nn.denoiser import timestep_embedding


def test_karras_grid_endpoints_and_monotone():
    g = noise.karras_sigmas(32)
    assert g[0].item() == pytest.approx(80.0, rel=1e-12)
    assert g[-1].item() == pytest.approx(0.002, rel=1e-12)
    assert torch.all(g[1:] < g[:-1])
    # middle point by hand: ((80^(1/7) + 0.002^(1/7)) / 2)^7 for n = 3
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert noise.karras_sigmas(3)[1].item() == pytest.approx(mid, rel=1e-12)


@pytest.mark.parametrize("k,expected", [(0, 21), (1, 41), (99_629, 41), (99_630, 81), (498_145, 641),
                                        (498_146, 1281), (600_000, 1281)])
def test_curriculum_600k(k, expected):
    assert noise.discretization_steps(k, 600_000) == expected


def test_curriculum_k_prime():
    # K' = ceil(600000 / log2(65)) = 99 629: the step where the second doubling starts is K' + 1.
    assert math.ceil(600_000 / math.log2(65)) == 99_629


def test_snapping_picks_nearest_grid_point():
    grid = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.002], dtype=torch.float64)
    sig = torch.tensor([79.0, 6.0, 4.0, 0.5, 0.04, 1e-5])
    assert noise.snap_to_grid(sig, grid).tolist() == [0, 1, 2, 3, 4, 4]


def test_lognormal_snapping_uses_p_mean_p_std():
    grid = noise.karras_sigmas(1280)
    u = torch.tensor([0.0, 1.0, -1.0])
    idx = noise.sample_lognormal_grid_index(u, grid)
    for ui, i in zip(u.tolist(), idx.tolist()):
        target = math.exp(-1.2 + 1.6 * ui)
        assert abs(grid[i].item() - target) == pytest.approx((grid - target).abs().min().item())


def test_grid_weight_by_hand():
    n = 1280
    lo, hi = 0.002 ** (1 / 7), 80 ** (1 / 7)
    sig = lambda i: (hi + i / (n - 1) * (lo - hi)) ** 7  # noqa: E731
    i = torch.tensor([0, 640, 1279])
    w = noise.diffusion_grid_weight(i, n)
    for ii, wi in zip(i.tolist(), w.tolist()):
        assert wi == pytest.approx(1 / (sig(ii) - sig(ii + 1)), rel=1e-10)
    # the last index continues the curve beyond σ_min: ≈ 2.6e4 and finite
    assert 2.4e4 < w[-1].item() < 2.8e4
    assert w[-1] > w[-2] > 0


def test_edm_weight():
    s = torch.tensor([0.5, 2.0])
    assert noise.edm_weight(s).tolist() == pytest.approx([(0.25 + 0.25) / 0.0625, (4 + 0.25) / 1.0])


def test_cm_boundary_scalings():
    s = 4.0
    smin = 0.002 * s
    x = torch.tensor([smin])
    assert noise.c_skip(x, smin).item() == 1.0
    assert noise.c_out(x, smin).item() == 0.0
    big = torch.tensor([80.0 * s])
    assert noise.c_skip(big, smin).item() == pytest.approx(0.25 / ((320 - smin) ** 2 + 0.25))
    assert noise.c_out(big, smin).item() == pytest.approx((320 - smin) * 0.5 / math.sqrt(320**2 + 0.25))


def test_c_in_c_noise():
    s = torch.tensor([1.0, 0.5])
    assert noise.c_in(s).tolist() == pytest.approx([1 / math.sqrt(1.25), 1 / math.sqrt(0.5)])
    assert noise.c_noise(s).tolist() == pytest.approx([0.0, 250 * math.log(0.5)])


def test_sinusoid_cos_then_sin():
    t = torch.tensor([0.0, 3.0])
    e = timestep_embedding(t, 8)
    freqs = [10000 ** (-i / 4) for i in range(4)]
    assert e[1, :4].tolist() == pytest.approx([math.cos(3 * f) for f in freqs], abs=1e-6)
    assert e[1, 4:].tolist() == pytest.approx([math.sin(3 * f) for f in freqs], abs=1e-6)
    assert e[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_resolution_shift():
    assert resolution_shift(256) == 4.0
    assert resolution_shift(512) == 8.0
    assert resolution_shift(32) == 0.5


def test_ect_r_of_t_by_hand():
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for stage in (1, 3):
        for t in (1.0, 5.0):
            expected = max(t * (1 - 2.0 ** (-stage) * (1 + 8 * sig(-t))), 0.002)
            got = noise.ect_r_of_t(torch.tensor([t], dtype=torch.float64), stage).item()
            assert got == pytest.approx(expected, rel=1e-12)
    # stage 1, t = 1 falls below the clamp; stage 3, t = 5 is 5·(1 − (1 + 8σ(−5))/8)
    assert noise.ect_r_of_t(torch.tensor([1.0]), 1).item() == pytest.approx(0.002)
    assert noise.ect_r_of_t(torch.tensor([5.0]), 3).item() == pytest.approx(4.3415, abs=1e-4)


def test_ect_stage_and_t():
    assert [noise.ect_stage(s, 100_000) for s in (0, 99_999, 100_000, 250_000)] == [1, 1, 2, 3]
    t = noise.ect_t(torch.tensor([-100.0, 0.0]))
    assert t.tolist() == pytest.approx([0.002, math.exp(-0.4)])
