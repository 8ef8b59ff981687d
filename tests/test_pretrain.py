"""Stage 1 (METHOD.md §1, §3): InfoNCE (local and over 2 gloo processes), GlobalBatchNorm1d, τ schedules,
view augmentations and the curriculum grid pair (the objective as a whole: test_pretrain_objective.py)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from epg.nn.layers import GlobalBatchNorm1d
from epg.objectives.pretrain import PretrainObjective, consistency_tau, info_nce, tau2_at
from epg.presets import get_preset
from epg.rng import SampleRNG

torch.set_num_threads(1)

TINY = {"model.enc_depth": 2, "model.enc_width": 32, "model.enc_heads": 2, "model.proj_hidden": 64,
        "model.proj_out": 16, "model.dec_width": 32, "model.dec_heads": 2}


def tiny_cfg(**extra):
    return get_preset("fmnist-tiny", "pretrain", {**TINY, **extra})


def tiny_objective(**extra) -> PretrainObjective:
    from epg.engine.setup import build_objective

    torch.manual_seed(0)
    return build_objective(tiny_cfg(**extra), verbose=False)


def _images(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1).float()


def loop_info_nce(q: torch.Tensor, k: torch.Tensor, tau) -> torch.Tensor:
    """ℓ(q_i) = log Σ_j exp(q_i·k_j/τ_i) − q_i·k_i/τ_i, one scalar at a time in float64."""
    q, k = q.double().tolist(), k.double().tolist()
    b = len(q)
    taus = [float(tau)] * b if not torch.is_tensor(tau) or tau.ndim == 0 else [float(t) for t in tau]
    out = []
    for i in range(b):
        logits = [sum(a * c for a, c in zip(q[i], k[j])) / taus[i] for j in range(b)]
        m = max(logits)
        lse = m + math.log(sum(math.exp(v - m) for v in logits))
        out.append(lse - logits[i])
    return torch.tensor(out, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- InfoNCE


def test_info_nce_matches_loop_scalar_and_per_sample_tau():
    g = torch.Generator().manual_seed(0)
    q, k = unit(7, 5, gen=g), unit(7, 5, gen=g)
    for tau in (0.2, torch.tensor(0.1), torch.rand(7, generator=g) * 0.3 + 0.05):
        got = info_nce(q, k, tau)
        assert got.shape == (7,) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), loop_info_nce(q, k, tau), atol=1e-5, rtol=1e-5)
    # per-sample τ really is per row: a different τ for row 0 changes only ℓ(q_0)
    tau = torch.full((7,), 0.2)
    tau2 = tau.clone()
    tau2[0] = 0.05
    a, b = info_nce(q, k, tau), info_nce(q, k, tau2)
    assert not torch.allclose(a[0], b[0]) and torch.equal(a[1:], b[1:])


def analytic_query_grad(q: torch.Tensor, k: torch.Tensor, tau) -> torch.Tensor:
    """∂ℓ(q_i)/∂q_i = (Σ_j softmax_j(q_i·k_j/τ_i)·k_j − k_i)/τ_i (each loss depends on its own query only)."""
    q, k = q.double(), k.double()
    tau = torch.as_tensor(tau, dtype=torch.float64).reshape(-1, 1)
    p = torch.softmax(q @ k.T / tau, dim=1)
    return (p @ k - k) / tau


def test_info_nce_query_gradient_is_analytic():
    g = torch.Generator().manual_seed(3)
    q, k = unit(9, 5, gen=g), unit(9, 5, gen=g)
    for tau in (0.2, torch.rand(9, generator=g) * 0.3 + 0.05):
        qq = q.clone().requires_grad_()
        info_nce(qq, k, tau).sum().backward()
        torch.testing.assert_close(qq.grad.double(), analytic_query_grad(q, k, tau), atol=1e-5, rtol=1e-5)


def test_info_nce_keys_get_no_gradient():
    g = torch.Generator().manual_seed(1)
    q, k = unit(6, 4, gen=g).requires_grad_(), unit(6, 4, gen=g).requires_grad_()
    info_nce(q, k, 0.2).sum().backward()
    assert k.grad is None
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_info_nce_logits_fp32_under_autocast():
    """METHOD.md §3 item 4: logits and logsumexp in fp32, also inside the trainer's bf16 autocast."""
    g = torch.Generator().manual_seed(2)
    q, k = unit(64, 32, gen=g).bfloat16(), unit(64, 32, gen=g).bfloat16()
    reference = info_nce(q.float(), k.float(), 0.1)  # fp32 maths on the same (bf16-valued) vectors
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce(q, k, 0.1)
    assert got.dtype == torch.float32
    err = (got - reference).abs().max().item()
    assert err < 1e-4, (
        f"info_nce under autocast differs from fp32 by {err:.2e}: the logits matmul q @ keys.T is autocast to "
        "bf16 (src/epg/objectives/pretrain.py, info_nce); compute it with autocast disabled")


# ----------------------------------------------------------------------------------- two gloo processes

DIST_B, DIST_D = 8, 6  # info_nce: 4 queries per rank
BN_SIZES, BN_D = (3, 5), 6  # GlobalBatchNorm1d: unequal local batches


def _global_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return {
        "q": unit(DIST_B, DIST_D, gen=g), "k": unit(DIST_B, DIST_D, gen=g),
        "tau": torch.rand(DIST_B, generator=g) * 0.3 + 0.05,
        "x": torch.randn(sum(BN_SIZES), BN_D, generator=g) * 2 + 1,
        "proj": torch.randn(sum(BN_SIZES), BN_D, generator=g),
        "weight": torch.randn(BN_D, generator=g), "bias": torch.randn(BN_D, generator=g),
    }


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = _global_inputs()
        half = DIST_B // world
        sl = slice(rank * half, (rank + 1) * half)
        res = {}
        for name, tau in (("scalar", 0.2), ("per_sample", g["tau"][sl])):
            q = g["q"][sl].clone().requires_grad_()
            k = g["k"][sl].clone().requires_grad_()
            loss = info_nce(q, k, tau)
            loss.sum().backward()
            res[f"loss_{name}"], res[f"grad_{name}"] = loss.detach(), q.grad.clone()
            res[f"kgrad_{name}"] = k.grad
        start = sum(BN_SIZES[:rank])
        bs = slice(start, start + BN_SIZES[rank])
        bn = GlobalBatchNorm1d(BN_D)
        with torch.no_grad():
            bn.weight.copy_(g["weight"])
            bn.bias.copy_(g["bias"])
        x = g["x"][bs].clone().requires_grad_()
        y = bn(x)
        (y * g["proj"][bs]).sum().backward()
        res.update(bn_out=y.detach(), bn_xgrad=x.grad.clone(), bn_wgrad=bn.weight.grad.clone(),
                   bn_bgrad=bn.bias.grad.clone(), bn_rmean=bn.running_mean.clone(), bn_rvar=bn.running_var.clone())
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while the other still has a collective in flight
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_dist_worker, args=(2, str(tmp / "init"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


def test_info_nce_world_size_2_equals_single_process(dist_results):
    g = _global_inputs()
    for name, tau in (("scalar", 0.2), ("per_sample", g["tau"])):
        q = g["q"].clone().requires_grad_()
        ref = info_nce(q, g["k"], tau)
        ref.sum().backward()
        torch.testing.assert_close(ref.detach().double(), loop_info_nce(g["q"], g["k"], tau), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(q.grad.double(), analytic_query_grad(g["q"], g["k"], tau), atol=1e-5, rtol=1e-5)
        half = DIST_B // 2
        for rank, res in enumerate(dist_results):
            sl = slice(rank * half, (rank + 1) * half)
            # negatives are the global batch and row i's positive is global key rank·B_local + i
            torch.testing.assert_close(res[f"loss_{name}"], ref.detach()[sl], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(res[f"grad_{name}"], q.grad[sl], atol=1e-6, rtol=1e-6)
            assert res[f"kgrad_{name}"] is None
        # the gathered negatives matter: a purely local InfoNCE would give other numbers
        local = info_nce(g["q"][:half], g["k"][:half], tau if isinstance(tau, float) else tau[:half])
        assert not torch.allclose(local, dist_results[0][f"loss_{name}"], atol=1e-3)


def _bn_reference(x, proj, weight, bias, cls=nn.BatchNorm1d):
    bn = cls(x.shape[1])
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    x = x.clone().requires_grad_()
    y = bn(x)
    (y * proj).sum().backward()
    return bn, y.detach(), x.grad


def test_global_batchnorm_world_size_2_equals_batchnorm_on_concatenated_batch(dist_results):
    g = _global_inputs()
    ref_bn, y, xgrad = _bn_reference(g["x"], g["proj"], g["weight"], g["bias"])
    start = 0
    for rank, res in enumerate(dist_results):
        sl = slice(start, start + BN_SIZES[rank])
        start += BN_SIZES[rank]
        torch.testing.assert_close(res["bn_out"], y[sl], atol=1e-5, rtol=1e-5)
        # the gradient includes the other rank's loss through the global mean/var
        torch.testing.assert_close(res["bn_xgrad"], xgrad[sl], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res["bn_rmean"], ref_bn.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(res["bn_rvar"], ref_bn.running_var, atol=1e-6, rtol=1e-5)
    # parameter gradients: DDP would sum the per-rank contributions
    torch.testing.assert_close(dist_results[0]["bn_wgrad"] + dist_results[1]["bn_wgrad"], ref_bn.weight.grad,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dist_results[0]["bn_bgrad"] + dist_results[1]["bn_bgrad"], ref_bn.bias.grad,
                               atol=1e-5, rtol=1e-5)
    # meaningful: per-rank (local) statistics give different outputs
    local = nn.functional.batch_norm(g["x"][:3], None, None, g["weight"], g["bias"], training=True)
    assert not torch.allclose(local, y[:3], atol=1e-3)


def test_global_batchnorm_world_size_1_is_plain_batchnorm():
    g = _global_inputs()
    ref_bn, y, xgrad = _bn_reference(g["x"], g["proj"], g["weight"], g["bias"])
    gbn, y1, xgrad1 = _bn_reference(g["x"], g["proj"], g["weight"], g["bias"], cls=GlobalBatchNorm1d)
    torch.testing.assert_close(y1, y, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(xgrad1, xgrad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gbn.running_var, ref_bn.running_var)
    ref_bn.eval()
    gbn.eval()
    torch.testing.assert_close(gbn(g["x"]), ref_bn(g["x"]))


# ------------------------------------------------------------------------------------------ τ schedules


def test_consistency_tau_endpoints_and_midpoint():
    tau1, tau2 = 0.1, 0.17
    got = consistency_tau(torch.tensor([0.002, 80.0, 40.001], dtype=torch.float64), tau1, tau2, 0.002, 80.0)
    torch.testing.assert_close(got, torch.tensor([0.1, 0.17, 0.135], dtype=torch.float64), atol=1e-12, rtol=0)


def test_tau2_schedule_hand_values():
    K = 900
    assert tau2_at(0, K) == pytest.approx(0.2, abs=1e-12)
    assert tau2_at(300, K) == pytest.approx(0.2 - 0.1 * math.sqrt(0.5), abs=1e-12)  # sin(π/4)
    assert tau2_at(150, K) == pytest.approx(0.2 - 0.1 * math.sin(math.pi / 8), abs=1e-12)
    assert tau2_at(600, K) == pytest.approx(0.1, abs=1e-12)  # k = 2K/3: sin(π/2)
    assert tau2_at(601, K) == pytest.approx(0.1, abs=1e-12)
    assert tau2_at(900, K) == pytest.approx(0.1, abs=1e-12)
    assert tau2_at(5000, K) == pytest.approx(0.1, abs=1e-12)
    assert tau2_at(300, K, "constant", 0.1) == 0.1
    assert tau2_at(0, K, "constant", 0.07) == 0.07


# -------------------------------------------------------------------------------------- curriculum pairs


def _hand_grid(n: int) -> torch.Tensor:
    lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    return torch.tensor([(hi + i / (n - 1) * (lo - hi)) ** 7 for i in range(n)], dtype=torch.float64)


def _indices(t_n: torch.Tensor, t_n1: torch.Tensor, n_points: int) -> torch.Tensor:
    grid = _hand_grid(n_points)
    idx = (t_n.double()[:, None] - grid[None]).abs().argmin(1)
    torch.testing.assert_close(t_n.double(), grid[idx], rtol=1e-9, atol=0)
    torch.testing.assert_close(t_n1.double(), grid[idx + 1], rtol=1e-9, atol=0)  # adjacent, less noisy
    assert bool((t_n > t_n1).all()) and int(idx.max()) <= n_points - 2
    return idx


def test_grid_pair_same_index_for_the_global_batch():
    obj = tiny_objective(**{"train.steps": 1_000_000_000})
    k_prime = math.ceil(1e9 / math.log2(math.ceil(1280 / 20) + 1))
    assert _indices(*obj.grid_pair(SampleRNG(0, 0, torch.arange(4)), 0, 4), 21).numel() == 4  # N(0) = 21
    seen = set()
    for step in range(1, 601):  # N = 41 for 1 ≤ k ≤ K'
        a = obj.grid_pair(SampleRNG(0, step, torch.arange(8)), step, 8)
        b = obj.grid_pair(SampleRNG(0, step, torch.arange(100, 105)), step, 5)  # another rank's positions
        ia, ib = _indices(*a, 41), _indices(*b, 41)
        assert len(set(ia.tolist())) == 1 and set(ia.tolist()) == set(ib.tolist())
        seen.add(int(ia[0]))
    assert seen == set(range(40))
    _indices(*obj.grid_pair(SampleRNG(0, k_prime + 1, torch.arange(3)), k_prime + 1, 3), 81)


def test_grid_pair_per_sample_index():
    obj = tiny_objective(**{"pretrain.per_sample_index": True, "train.steps": 1_000_000_000})
    pos = torch.arange(2000)
    idx = _indices(*obj.grid_pair(SampleRNG(0, 0, pos), 0, 2000), 21)
    assert set(idx.tolist()) == set(range(20))
    # a sample's index depends on its position only, not on the rest of the batch
    sub = _indices(*obj.grid_pair(SampleRNG(0, 0, pos[5:9]), 0, 4), 21)
    assert torch.equal(sub, idx[5:9])
