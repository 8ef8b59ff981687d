"""PretrainObjective as a whole (METHOD.md §3): a bf16 forward/backward with the teacher's EMA, both contrastive views
as one encoder batch, the term weights of the CPU ablations and one ε per batch for the consistency pair."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from epg.pixels import normalize
from epg.rng import SampleRNG

sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import _images, tiny_objective  # noqa: E402

torch.set_num_threads(1)

# --------------------------------------------------------------------------- objective: bf16 and teacher


def test_pretrain_objective_bf16_forward_backward_and_teacher_ema():
    obj = tiny_objective()
    obj.train()
    assert obj.teacher.training  # [decision] the teacher's BN uses batch statistics
    n = 8
    images = _images(n, 1, seed=6)
    labels = torch.zeros(n, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = obj(images, labels, SampleRNG(0, 3, torch.arange(n)), 3)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert set(terms) == {"contrastive", "consistency"}
    torch.testing.assert_close(loss.detach(), terms["contrastive"] + terms["consistency"])
    loss.backward()
    grads = [p.grad for p in obj.net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in obj.teacher.parameters())

    # EMA: θ⁻ ← 0.99·θ⁻ + 0.01·θ, after moving θ away from θ⁻
    with torch.no_grad():
        for p in obj.net.parameters():
            p.add_(torch.randn_like(p))
    before = [p.detach().clone() for p in obj.teacher.parameters()]
    online = [p.detach().clone() for p in obj.net.parameters()]
    obj.after_optimizer_step(4)
    for t_old, w, t_new in zip(before, online, obj.teacher.parameters()):
        torch.testing.assert_close(t_new, t_old + (1 - 0.99) * (w - t_old), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(t_new, t_old)


def test_views_batched_through_the_encoder_equal_one_call_per_view(monkeypatch):
    """BATCH_VIEWS runs both contrastive views as one 2B batch; the projector's BN must still see each view alone,
    so the loss, every gradient and the BN running statistics equal those of two separate calls (fp32)."""
    import epg.objectives.pretrain as pretrain_mod

    n = 8
    images, labels = _images(n, 1, seed=6), torch.zeros(n, dtype=torch.long)
    results = {}
    for batched in (False, True):
        monkeypatch.setattr(pretrain_mod, "BATCH_VIEWS", batched)
        obj = tiny_objective()
        obj.train()
        loss, terms = obj(images, labels, SampleRNG(0, 3, torch.arange(n)), 3)
        loss.backward()
        results[batched] = (loss.detach(), terms["contrastive"], [p.grad.clone() for p in obj.net.parameters()],
                            [b.clone() for b in obj.teacher.buffers()] + [b.clone() for b in obj.net.buffers()])
    (l0, c0, g0, b0), (l1, c1, g1, b1) = results[False], results[True]
    assert c0 > 0  # the contrastive term is on, so the batched path was taken
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c1, c0, rtol=1e-6, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(b1, b0):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_batched_views_keep_batchnorm_per_view(monkeypatch):
    """Wired wrong (the projector over the 2B batch at once), BN would mix the views' statistics: the features
    of view 1 would then depend on view 2. Here view 2 changes and view 1's projected features must not."""
    import epg.objectives.pretrain as pretrain_mod

    monkeypatch.setattr(pretrain_mod, "BATCH_VIEWS", True)
    obj = tiny_objective()
    obj.train()
    gen = torch.Generator().manual_seed(1)
    y1, y2 = torch.randn(6, 1, 32, 32, generator=gen), torch.randn(6, 1, 32, 32, generator=gen)
    t = torch.full((6,), 0.002)
    with torch.no_grad():
        a1, _ = obj._encode_views(obj.net, y1, y2, t)
        b1, _ = obj._encode_views(obj.net, y1, 3.0 * y2 + 1.0, t)
    torch.testing.assert_close(a1, b1, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- loss weights (CPU ablations)


def test_term_weights_scale_each_term_and_zero_skips_it():
    n = 8
    images, labels = _images(n, 1, seed=6), torch.zeros(n, dtype=torch.long)

    def run(**weights):
        obj = tiny_objective(**{f"pretrain.{k}_weight": v for k, v in weights.items()})
        return obj(images, labels, SampleRNG(0, 3, torch.arange(n)), 3)

    _, ref = run()
    loss, terms = run(contrastive=2.0, consistency=0.5)
    torch.testing.assert_close(terms["contrastive"], ref["contrastive"])
    torch.testing.assert_close(terms["consistency"], ref["consistency"])
    torch.testing.assert_close(loss.detach(), 2.0 * ref["contrastive"] + 0.5 * ref["consistency"])
    loss, terms = run(consistency=0.0)  # contrastive only: the other branch is not computed
    assert float(terms["consistency"]) == 0.0
    torch.testing.assert_close(loss.detach(), ref["contrastive"])
    loss, terms = run(contrastive=0.0)  # consistency only
    assert float(terms["contrastive"]) == 0.0
    torch.testing.assert_close(loss.detach(), ref["consistency"])
    obj = tiny_objective(**{"pretrain.contrastive_weight": 0.0})
    obj(images, labels, SampleRNG(0, 3, torch.arange(n)), 3)[0].backward()
    # the consistency term alone trains the encoder, not the projector (it reads LN(CLS))
    assert all(p.grad is None for p in obj.net.projector.parameters())
    assert all(p.grad is not None for p in obj.net.encoder.blocks.parameters())


def _consistency_inputs(noise: str, positions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """x_{σ_n} − x0 of the consistency query for each sample (the noise σ_n·ε it was given)."""
    obj = tiny_objective(**{"pretrain.consistency_noise": noise, "pretrain.contrastive_weight": 0.0,
                            "data.hflip": False})
    seen, real = [], obj._encode
    obj._encode = lambda net, x, s, proj: (seen.append(x.detach().clone()), real(net, x, s, proj))[1]
    obj(images, torch.zeros(len(images), dtype=torch.long), SampleRNG(0, 3, positions), 3)
    return seen[0] - normalize(images, obj.cfg.noise.normalization)


def test_consistency_noise_batch_gives_every_image_and_process_one_eps():
    images = _images(6, 1)
    shared = _consistency_inputs("batch", torch.arange(6), images)
    assert shared.abs().max() > 0.01
    for row in shared[1:]:  # (x0 + σε) − x0 = σε up to fp32 rounding at |x| ≈ 5
        torch.testing.assert_close(row, shared[0], rtol=0, atol=1e-5)
    other_rank = _consistency_inputs("batch", torch.arange(100, 102), images[:2])
    assert torch.equal(other_rank[0], shared[0])  # seeded by the step alone: the same on every process
    own = _consistency_inputs("sample", torch.arange(6), images)  # the paper: an ε per image
    assert not torch.allclose(own[0], own[1]) and not torch.allclose(own[0], shared[0])
