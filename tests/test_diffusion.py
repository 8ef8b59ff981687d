"""Stage 2a (METHOD.md §4): the x0-prediction objective recomputed by hand from the draws it made.

A recording network stands in for the generator (an affine map of its input, so the loss is known in closed
form); σ, ε and the label dropout are re-drawn from the same counter-based streams and every step of the
objective — snapping to the Karras grid, the shift, c_in, c_noise, the forward process, each weighting and the
label dropout — is checked against formulas written out here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from epg.objectives.diffusion import DiffusionObjective
from epg.presets import get_preset
from epg.rng import SampleRNG

torch.set_num_threads(1)


class Recorder(nn.Module):
    """G(x, c_noise, y) = 0.5·x + 0.05, remembering what it was called with."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, c_noise, labels=None):
        self.calls.append((x.detach().clone(), c_noise.detach().clone(), None if labels is None else labels.clone()))
        return self.scale * x + 0.05


def hand_karras(i: float, n: int = 1280) -> float:
    hi, lo = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    return (hi + i / (n - 1) * (lo - hi)) ** 7


def run(weighting: str, n: int = 16, seed: int = 3, step: int = 5, **extra):
    # The paper's σ distribution (the CPU presets move P_mean to −0.6), written out below as −1.2 / 1.6.
    cfg = get_preset("fmnist-tiny", "diffusion", {"diffusion.weighting": weighting, "data.hflip": False,
                                                  "diffusion.p_mean": -1.2, "diffusion.p_std": 1.6, **extra})
    net = Recorder()
    obj = DiffusionObjective(cfg, net)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    positions = torch.arange(100, 100 + n)
    loss, terms = obj(images, labels, SampleRNG(cfg.train.seed, step, positions), step)
    return cfg, net, images, labels, SampleRNG(cfg.train.seed, step, positions), loss, terms


@pytest.mark.parametrize("weighting, cap", [("grid", 0.0), ("edm", 0.0), ("uniform", 0.0), ("edm", 40.0),
                                            ("grid", 1000.0)])
def test_loss_recomputed_by_hand(weighting, cap):
    cfg, net, images, labels, rng, loss, terms = run(weighting, **{"diffusion.weight_cap": cap})
    x_in, c_noise, y = net.calls[0]
    shift = cfg.sigma_shift
    assert shift == 0.5  # 32-pixel images: s = H/64
    x0 = images.double() / 127.5 - 1.0
    u = rng.randn("sigma", device="cpu").double()
    eps = rng.randn("eps", 1, 32, 32).double()
    expected, sigmas, capped = [], [], []
    for b in range(len(images)):
        target = math.exp(-1.2 + 1.6 * float(u[b]))  # log-normal σ, unshifted
        i = min(range(1280), key=lambda k: abs(hand_karras(k) - target))  # snapped to the 1280-point grid
        sigma = hand_karras(i)
        sigmas.append(sigma)
        sp = sigma * shift
        assert float(c_noise[b]) == pytest.approx(250.0 * math.log(sp), rel=1e-5, abs=1e-3)
        c_in = 1.0 / math.sqrt(sp * sp + 0.25)
        want_in = c_in * (x0[b] + sp * eps[b])
        assert torch.allclose(x_in[b].double(), want_in, rtol=1e-5, atol=1e-5)
        mse = float(((0.5 * want_in + 0.05 - x0[b]) ** 2).mean())
        lam = {"grid": 1.0 / (sigma - hand_karras(i + 1)),
               "edm": (sigma**2 + 0.25) / (sigma * 0.5) ** 2,
               "uniform": 1.0}[weighting]
        if cap:
            capped.append(lam > cap)
            lam = min(lam, cap)
        expected.append(lam * mse)
    assert len(set(sigmas)) > 8  # the draws really differ per sample
    if cap:  # the cap binds for some samples of the batch and not for others
        assert 0 < sum(capped) < len(capped)
    assert float(loss.detach()) == pytest.approx(sum(expected) / len(expected), rel=1e-4)


def test_grid_weight_of_the_last_index_continues_the_curve():
    # σ far below σ_min snaps to the last grid point, whose weight uses the curve's next point (≈ 2.6e4).
    last = 1.0 / (hand_karras(1279) - hand_karras(1280))
    assert 2.4e4 < last < 2.8e4


@pytest.mark.parametrize("p, check", [(0.0, "none"), (1.0, "all"), (0.1, "tenth")])
def test_label_dropout_to_the_null_label(p, check):
    n = 2000 if check == "tenth" else 32
    cfg, net, _, labels, _, _, _ = run("uniform", n=n, **{"diffusion.label_dropout": p})
    y = net.calls[0][2]
    dropped = y == cfg.model.num_classes
    assert torch.equal(y[~dropped], labels[~dropped])  # kept labels are untouched
    frac = float(dropped.float().mean())
    if check == "none":
        assert frac == 0.0
    elif check == "all":
        assert frac == 1.0
    else:
        assert 0.08 < frac < 0.12  # binomial(2000, 0.1): ±3 sd ≈ ±0.02
