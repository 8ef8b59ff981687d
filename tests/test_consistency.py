"""Stage 2b (METHOD.md §1, §5): CM boundary parameterisation, same dropout mask for online/target passes,
pseudo-Huber term, ECT weighting 1/(t' − r'), and the auxiliary InfoNCE through a frozen stage-1 network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from epg.nn import build_generator, build_rcm, consistency_function
from epg.objectives.consistency import ConsistencyObjective, pseudo_huber_term
from epg.presets import get_preset
from epg.rng import SampleRNG

torch.set_num_threads(1)

TINY = {"model.enc_depth": 2, "model.enc_width": 32, "model.enc_heads": 2, "model.dec_width": 32,
        "model.dec_heads": 2, "model.proj_hidden": 64, "model.proj_out": 16, "model.dropout": 0.0}
B = 6


def tiny_cfg(**extra):
    return get_preset("fmnist-tiny", "consistency", {**TINY, **extra})


def random_generator(cfg, seed: int = 0) -> nn.Module:
    """A Generator whose adaLN-Zero modulation and head are random, so F(·) and dropout really matter."""
    torch.manual_seed(seed)
    net = build_generator(cfg.model)
    with torch.no_grad():
        for blk in net.blocks:
            nn.init.normal_(blk.ada[-1].weight, std=0.1)
            nn.init.normal_(blk.ada[-1].bias, std=0.1)
        nn.init.normal_(net.head.weight, std=0.2)
        nn.init.normal_(net.head.bias, std=0.2)
    return net


def batch(seed: int = 0, n: int = B):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return images, labels


def hand_c_skip(s: float, s_min: float, sd: float = 0.5) -> float:
    return sd**2 / ((s - s_min) ** 2 + sd**2)


def hand_c_out(s: float, s_min: float, sd: float = 0.5) -> float:
    return (s - s_min) * sd / math.sqrt(s**2 + sd**2)


# ---------------------------------------------------------------------------------------------- boundary


@pytest.mark.parametrize("shift", [1.0, 4.0])
def test_consistency_function_is_identity_at_sigma_min(shift):
    cfg = tiny_cfg()
    net = random_generator(cfg).eval()
    x = torch.randn(B, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 3
    y = torch.arange(B) % 10
    s_min = 0.002 * shift
    sigma = (torch.clamp(torch.full((B,), 1e-9), min=0.002) * shift).float()  # as the objective forms t'
    raw = net(x / math.sqrt(s_min**2 + 0.25), 250 * torch.log(sigma), y)
    assert raw.abs().max() > 0.1  # F itself is far from zero: the identity comes from c_skip = 1, c_out = 0
    assert torch.equal(consistency_function(net, x, sigma, y, s_min, 0.5), x)
    away = consistency_function(net, x, sigma * 1.5, y, s_min, 0.5)
    assert (away - x).abs().max() > 1e-4


def test_consistency_function_composition_and_continuity():
    cfg = tiny_cfg()
    net = random_generator(cfg).eval()
    s_min = 0.002 * 0.5
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([3, 7])
    for sig in (s_min, 0.01, 0.3, 2.0, 40.0):
        sigma = torch.full((2,), sig)
        c_in = 1 / math.sqrt(sig**2 + 0.25)
        expected = hand_c_skip(sig, s_min) * x + hand_c_out(sig, s_min) * net(c_in * x, 250 * torch.log(sigma), y)
        torch.testing.assert_close(consistency_function(net, x, sigma, y, s_min, 0.5), expected, atol=1e-5,
                                   rtol=1e-5)
    # near the boundary f → x linearly: |f − x| ≤ c_out·|F| + (1 − c_skip)·|x| with c_out ≈ δ
    for delta in (1e-3, 1e-5):
        sigma = torch.full((2,), s_min + delta)
        dev = (consistency_function(net, x, sigma, y, s_min, 0.5) - x).abs().max().item()
        assert 0 < dev < 10 * delta


def test_c_skip_c_out_boundary_values_and_continuity():
    from epg.noise import c_out, c_skip

    for s in (0.5, 1.0, 4.0):
        s_min = 0.002 * s
        at_min = torch.tensor([s_min], dtype=torch.float32)
        assert c_skip(at_min, s_min).item() == 1.0 and c_out(at_min, s_min).item() == 0.0
        sig = torch.linspace(s_min, 80.0 * s, 200_001, dtype=torch.float64)
        for fn in (c_skip, c_out):
            vals = fn(sig, s_min)
            assert (vals.diff().abs() <= 2.0 * sig.diff()).all()  # Lipschitz: small σ steps, small changes
        for v in (s_min, 0.05, 0.7, 13.0):
            t = torch.tensor([v], dtype=torch.float64)
            assert c_skip(t, s_min).item() == pytest.approx(hand_c_skip(v, s_min), rel=1e-12)
            assert c_out(t, s_min).item() == pytest.approx(hand_c_out(v, s_min), rel=1e-12, abs=1e-15)
        assert c_skip(torch.tensor([80.0 * s]), s_min).item() < 1e-3
        assert c_out(torch.tensor([80.0 * s]), s_min).item() == pytest.approx(0.5, rel=1e-3)


# -------------------------------------------------------------------------------------- same dropout mask


class PassRecorder:
    """Forward hooks on the objective's network: the global RNG state before/after each call, and its output."""

    def __init__(self, net: nn.Module):
        self.pre, self.post, self.out = [], [], []
        self.handles = [net.register_forward_pre_hook(lambda m, a: self.pre.append(torch.get_rng_state())),
                        net.register_forward_hook(self._after)]

    def _after(self, module, args, output):
        self.post.append(torch.get_rng_state())
        self.out.append(output.detach().clone())

    def remove(self):
        for h in self.handles:
            h.remove()


def dropout_objective(**extra) -> ConsistencyObjective:
    cfg = tiny_cfg(**{"model.dropout": 0.5, **extra})
    obj = ConsistencyObjective(cfg, random_generator(cfg))
    obj.train()
    return obj


def test_dropout_is_active_and_unrestored_passes_differ():
    """Control: in train mode with dropout 0.5, two plain calls on one input give different outputs."""
    obj = dropout_objective()
    x = torch.randn(B, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    cn, y = torch.full((B,), 250 * math.log(0.3)), torch.arange(B) % 10
    a, b = obj.net(x, cn, y), obj.net(x, cn, y)
    assert (a - b).abs().max() > 1e-3
    obj.eval()
    assert torch.equal(obj.net(x, cn, y), obj.net(x, cn, y))


def test_online_and_target_passes_share_the_dropout_mask():
    images, labels = batch(4)
    # t = r for every sample (p_mean → −∞ clamps t and r at 0.002): the two passes see the same input
    obj = dropout_objective(**{"consistency.p_mean": -30.0})
    torch.manual_seed(1234)
    rec = PassRecorder(obj.net)
    loss, terms = obj(images, labels, SampleRNG(0, 10, torch.arange(B)), 10)
    rec.remove()
    assert len(rec.out) == 2
    assert not torch.equal(rec.pre[0], rec.post[0])  # the online pass consumed randomness (dropout)
    assert torch.equal(rec.pre[0], rec.pre[1])
    assert torch.equal(rec.out[0], rec.out[1])
    assert loss.item() == 0.0 and terms["cm"].item() == 0.0
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in obj.net.parameters())
    # afterwards the RNG continues from the online pass (the next step gets a fresh mask)
    assert torch.equal(torch.get_rng_state(), rec.post[0])

    # t ≠ r: still the same RNG state (= the same mask) for both passes
    obj = dropout_objective()
    rec = PassRecorder(obj.net)
    loss, _ = obj(images, labels, SampleRNG(0, 10, torch.arange(B)), 10)
    rec.remove()
    assert torch.equal(rec.pre[0], rec.pre[1]) and not torch.equal(rec.out[0], rec.out[1])
    assert loss.item() > 0


# -------------------------------------------------------------------------------------- loss and weights


def test_pseudo_huber_term_gradient_is_twice_pseudo_huber():
    c = 0.06
    g = torch.Generator().manual_seed(5)
    for scale in (1.0, 0.01, 1e-4):
        d = (torch.randn(7, 3, 4, 4, generator=g, dtype=torch.float64) * scale).requires_grad_()
        d2 = (d**2).sum(dim=(1, 2, 3))
        (g1,) = torch.autograd.grad(pseudo_huber_term(d2, c).sum(), d)
        d_ = d.detach().clone().requires_grad_()
        d2_ = (d_**2).sum(dim=(1, 2, 3))
        (g2,) = torch.autograd.grad((torch.sqrt(d2_ + c * c) - c).sum(), d_)
        torch.testing.assert_close(g1, 2 * g2, atol=1e-12, rtol=1e-9)
        torch.testing.assert_close(pseudo_huber_term(d2, c), d2 / torch.sqrt(d2 + c * c))


def hand_t_r(rng: SampleRNG, step: int, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    c = cfg.consistency
    u = rng.randn("t").double()
    t = torch.clamp(torch.exp(c.p_mean + c.p_std * u), min=0.002)
    stage = 1 + step // c.stage_length
    r = torch.clamp(t * (1 - c.q ** (-stage) * (1 + c.k / (1 + torch.exp(c.b * t)))), min=0.002)
    return t.float(), r.float()


def hand_forward(obj: ConsistencyObjective, images, labels, rng: SampleRNG, step: int):
    """The ECT loss of METHOD.md §5 recomputed from the formulas (dropout 0: both passes are deterministic)."""
    cfg = obj.cfg
    s, s_min = cfg.sigma_shift, 0.002 * cfg.sigma_shift
    x0 = images.float() / 127.5 - 1
    flip = rng.rand("hflip", 1).view(-1, 1, 1, 1) < 0.5
    x0 = torch.where(flip, x0.flip(-1), x0)
    t, r = hand_t_r(rng, step, cfg)
    ts, rs = t * s, r * s
    eps = rng.randn("eps", *x0.shape[1:])
    f_t = consistency_function(obj.net, x0 + ts.view(-1, 1, 1, 1) * eps, ts, labels, s_min)
    with torch.no_grad():
        f_r = consistency_function(obj.net, x0 + rs.view(-1, 1, 1, 1) * eps, rs, labels, s_min)
    d2 = ((f_t - f_r) ** 2).sum(dim=(1, 2, 3))
    weight = torch.zeros_like(ts)
    live = ts != rs
    weight[live] = 1 / (ts[live] - rs[live]) if cfg.consistency.weighting == "ect" else 1.0
    c = cfg.consistency.huber_c
    per_sample = weight * d2 / torch.sqrt(d2.detach() + c * c)
    return per_sample.mean(), x0, f_t, t, r


@pytest.mark.parametrize("weighting", ["ect", "uniform"])
@pytest.mark.parametrize("p_mean, step", [(-6.0, 0), (-0.4, 500)])
def test_ect_weight_on_shifted_sigmas_and_zero_where_t_equals_r(p_mean, step, weighting):
    """ECT weight 1/(t' − r') (the paper) or 1 (`uniform`), both 0 where t' = r'."""
    cfg = tiny_cfg(**{"consistency.p_mean": p_mean, "consistency.stage_length": 200,
                      "consistency.weighting": weighting})
    assert cfg.sigma_shift == 0.5  # 32² images: s = H/64
    obj = ConsistencyObjective(cfg, random_generator(cfg))
    obj.train()
    n = 12
    images, labels = batch(6, n)
    rng = SampleRNG(3, step, torch.arange(40, 40 + n))
    expected, _, _, t, r = hand_forward(obj, images, labels, rng, step)
    if p_mean == -6.0:  # about half of the batch has t = r = 0.002 (weight 0), the rest t > r = 0.002
        assert 0 < int((t == r).sum()) < n and bool((r == 0.002).all())
    else:  # stage 3: r = t·(1 − (1 + 8·sigmoid(−t))/8) mostly above the clamp
        assert bool((t > r).all()) and int((r > 0.002).sum()) > n // 2
    loss, terms = obj(images, labels, rng, step)
    assert torch.isfinite(loss) and loss.item() > 0
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=0)
    torch.testing.assert_close(terms["cm"], expected.detach(), rtol=1e-4, atol=0)
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in obj.net.parameters())


# ------------------------------------------------------------------------------------------ auxiliary loss


def loop_info_nce(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    q, k = q.double().tolist(), k.double().tolist()
    out = []
    for i in range(len(q)):
        logits = [sum(a * b for a, b in zip(q[i], k[j])) / tau for j in range(len(k))]
        m = max(logits)
        out.append(m + math.log(sum(math.exp(v - m) for v in logits)) - logits[i])
    return torch.tensor(out, dtype=torch.float64)


def test_the_cpu_presets_train_without_the_aux_term_and_the_paper_presets_with_it():
    assert tiny_cfg().consistency.aux_weight == 0.0  # measured: presets.CPU_RECIPES["consistency"]
    assert get_preset("fmnist-small", "consistency").consistency.aux_weight == 0.0
    assert get_preset("epg-l-16-in256", "consistency").consistency.aux_weight == 1.0  # METHOD.md §5


def test_auxiliary_infonce_through_a_frozen_stage1_network():
    cfg = tiny_cfg(**{"consistency.aux_weight": 1.0})
    net = random_generator(cfg)
    torch.manual_seed(7)
    frozen = build_rcm(cfg.model)
    with torch.no_grad():  # non-trivial running statistics, which eval-mode BN must use
        for m in frozen.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    frozen.train()
    buffers = {k: v.clone() for k, v in frozen.state_dict().items()}
    obj = ConsistencyObjective(cfg, net, frozen)
    obj.train()
    assert obj.net.training
    assert not any(m.training for m in frozen.modules())
    assert all(not p.requires_grad for p in frozen.parameters())

    images, labels = batch(8)
    rng = SampleRNG(1, 20, torch.arange(B))
    loss, terms = obj(images, labels, rng, 20)
    assert set(terms) == {"cm", "aux"}
    torch.testing.assert_close(loss.detach(), terms["cm"] + cfg.consistency.aux_weight * terms["aux"])
    loss.backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in buffers.items())  # no BN update in eval
    grads_with_aux = [p.grad.clone() for p in obj.net.parameters() if p.grad is not None]

    # the aux value by hand: InfoNCE(τ = 0.1) between g(E(f_θ(x_t))) and g(E(x0)), both at σ'_min
    cm, x0, f_t, _, _ = hand_forward(obj, images, labels, rng, 20)
    torch.testing.assert_close(cm, terms["cm"], rtol=1e-4, atol=0)
    s_min = torch.full((B,), 0.002 * cfg.sigma_shift)
    scale = 1 / math.sqrt((0.002 * cfg.sigma_shift) ** 2 + 0.25)

    def w_feat(x):
        with torch.no_grad():
            return F.normalize(frozen.projector(frozen.features(scale * x, 250 * torch.log(s_min))), dim=-1)

    aux = loop_info_nce(w_feat(f_t), w_feat(x0), 0.1).mean()
    assert terms["aux"].item() == pytest.approx(aux.item(), rel=1e-4)

    # the aux term sends gradient into the generator
    obj.zero_grad(set_to_none=True)
    obj.cfg.consistency.aux_weight = 0.0
    loss_cm, terms_cm = obj(images, labels, rng, 20)
    assert set(terms_cm) == {"cm"}
    loss_cm.backward()
    grads_cm = [p.grad for p in obj.net.parameters() if p.grad is not None]
    assert any(not torch.allclose(a, b) for a, b in zip(grads_with_aux, grads_cm))


def test_no_auxiliary_term_without_a_frozen_network():
    cfg = tiny_cfg()
    obj = ConsistencyObjective(cfg, random_generator(cfg))
    obj.train()
    images, labels = batch(9)
    _, terms = obj(images, labels, SampleRNG(0, 0, torch.arange(B)), 0)
    assert set(terms) == {"cm"}


# ------------------------------------------------------------------------------------- end to end (engine)


def test_consistency_run_from_a_stage1_checkpoint_then_epg_sample(tmp_path, capsys):
    """Stage 1 → `Trainer` consistency tuning → `epg sample`: W is the stage-1 network, frozen and outside the
    optimiser; the generator's encoder starts from it; the aux term is trained; 1-step and 2-step NFE."""
    import sys
    from pathlib import Path

    import numpy as np

    from epg.cli import main
    from epg.engine.checkpoint import load_network
    from epg.engine.trainer import Trainer

    sys.path.insert(0, str(Path(__file__).parent))
    from engine_worker import Synthetic, tiny_config

    stage1 = Trainer(tiny_config("pretrain", **{"train.steps": 2}), tmp_path / "s1", dataset=Synthetic()).fit()
    rcm, _, _ = load_network(stage1.checkpoint, prefer_ema=False)
    w0 = {k: v.clone() for k, v in rcm.state_dict().items()}
    cfg = tiny_config("consistency", **{"train.steps": 3, "train.init_from": str(stage1.checkpoint),
                                        "model.dropout": 0.5, "consistency.aux_weight": 1.0})
    trainer = Trainer(cfg, tmp_path / "cm", dataset=Synthetic())
    frozen = trainer.model.objective.frozen
    assert frozen is not None and not frozen.training
    assert all(not p.requires_grad for p in frozen.parameters())
    in_opt = {id(p) for g in trainer.model.opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in frozen.parameters()}
    for k, v in trainer.model.net.encoder.state_dict().items():  # the generator's encoder starts as the stage-1 encoder
        torch.testing.assert_close(v, w0[f"encoder.{k}"], rtol=0, atol=0)
    result = trainer.fit()
    assert result.step == 3
    for k, v in frozen.state_dict().items():  # W never moves (its BN buffers included)
        torch.testing.assert_close(v, w0[k], rtol=0, atol=0)
    log = (tmp_path / "cm" / "log.jsonl").read_text().splitlines()
    assert all('"aux"' in line and '"cm"' in line for line in log if line)

    for extra, nfe in (([], 1), (["--sample.cm_sigmas", "0.8"], 2)):
        out = tmp_path / f"s{nfe}.npz"
        assert main(["sample", "--checkpoint", str(tmp_path / "cm"), "--num", "6", *extra, "--out", str(out)]) == 0
        assert f"({nfe} NFE each, consistency)" in capsys.readouterr().out
        arr = np.load(out)["arr_0"]
        assert arr.shape == (6, 32, 32, 1) and arr.dtype == np.uint8 and arr.std() > 0
