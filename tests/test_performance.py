"""The fast paths change no numbers: attention paths agree in fp32, fused AdamW agrees with the for-loop."""

import pytest
import torch

from epg.nn import layers


@pytest.mark.parametrize("path", ["math", "fused"])
def test_cpu_attention_paths_agree_in_fp32_forward_and_backward(monkeypatch, path):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 66, 32, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.randn(3, 4, 66, 32, generator=g)
    results = {}
    for name in ("explicit", path):
        monkeypatch.setattr(layers, "CPU_ATTENTION", name)
        for t in (q, k, v):
            t.grad = None
        out = layers.attention(q, k, v)
        out.backward(grad)
        results[name] = [out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()]
    for a, b in zip(results["explicit"], results[path]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # and both are softmax(q·kᵀ/√d)·v, written out once more by hand
    ref = torch.softmax(q.detach() @ k.detach().transpose(-1, -2) / 32 ** 0.5, -1) @ v.detach()
    torch.testing.assert_close(results["explicit"][0], ref, atol=1e-5, rtol=0)


def test_explicit_attention_is_the_default_on_cpu():
    assert layers.CPU_ATTENTION == "explicit"


def test_fused_adamw_agrees_with_the_for_loop_the_engine_used_to_run():
    g = torch.Generator().manual_seed(1)
    init = [torch.randn(s, generator=g) for s in [(64, 48), (48,), (1, 66, 48)]]
    finals = {}
    for kind in ("forloop", "fused"):
        params = [p.clone().requires_grad_() for p in init]
        groups = [{"params": params[:2], "weight_decay": 0.03}, {"params": params[2:], "weight_decay": 0}]
        opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=True if kind == "fused" else None,
                                foreach=False if kind == "forloop" else None)
        gg = torch.Generator().manual_seed(2)
        for step in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gg)
            for group in opt.param_groups:
                group["lr"] = 1e-3 * step / 10  # warm-up from 0, as the engine's schedule
            opt.step()
        finals[kind] = params
    for a, b in zip(finals["forloop"], finals["fused"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert all(not torch.equal(a, p) for a, p in zip(finals["fused"], init))  # the steps did move the weights
