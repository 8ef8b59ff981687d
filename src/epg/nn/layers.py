"""Transformer building blocks shared by the encoder and the decoder (METHOD.md §2)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# How attention runs on CPU (benchmarks/throughput.py flips it to measure the others), chosen by measurement
# (benchmarks/results/throughput.md, fmnist-tiny generator, 1 thread): "explicit" — q·kᵀ → softmax → ·v as three
# ops in the autocast dtype — took 0.67-0.74× the time of SDPA's math backend for a bf16 training step and
# 0.61-0.68× for bf16 inference (the math backend upcasts q, k, v to fp32 and adds a safe-softmax pass over
# the B×H×L×L scores), and the same time in fp32 (±5 %); the fused CPU kernel ("fused") was 2× slower in
# training and 0.85-0.90× in bf16 inference. On GPUs SDPA's own dispatch (flash / memory-efficient) is used.
CPU_ATTENTION = "explicit"  # explicit | math | fused


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v over (B, H, L, d) heads, by the fastest path measured for the device (see above)."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v)
    if CPU_ATTENTION == "explicit":
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
        return torch.matmul(scores.softmax(-1).to(v.dtype), v)
    backend = SDPBackend.MATH if CPU_ATTENTION == "math" else SDPBackend.FLASH_ATTENTION
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head self-attention; qkv without bias, output projection with bias (METHOD.md §2)."""

    def __init__(self, dim: int, heads: int, proj_dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    """Two-layer MLP with exact GELU."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN ViT block: x + MHSA(LN x), then x + MLP(LN x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm whose batch statistics span every process (SyncBN that also runs on CPU/gloo).

    torch's SyncBatchNorm refuses CPU tensors, and the projector must see global statistics under DDP
    (METHOD.md §2). The all-reduce is differentiable, so gradients flow through the global mean/var.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        x32 = x.float()
        count = torch.full((1,), float(x.shape[0]), device=x.device)
        stats = all_reduce(torch.cat([x32.sum(0), (x32 * x32).sum(0), count]))
        d = x.shape[1]
        n = stats[-1]
        mean = stats[:d] / n
        var = (stats[d:2 * d] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1.0), m)
                self.num_batches_tracked += 1
        y = (x32 - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)
