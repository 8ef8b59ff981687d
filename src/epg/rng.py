"""Counter-based randomness: every random draw is a function of (seed, step, sample position, stream).

This is what makes runs independent of how the global batch is split over processes and micro-batches,
and what makes resume exact without storing generator states: a sample's noise, σ, augmentation and label
dropout depend only on its position in the training stream.
"""

from __future__ import annotations

import zlib

import torch

_MASK = (1 << 64) - 1


def mix_seed(*parts: int | str) -> int:
    """SplitMix64 over the parts: a well-spread 63-bit seed for torch.Generator."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        v = zlib.crc32(p.encode()) if isinstance(p, str) else int(p)
        h = (h ^ (v & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


class SampleRNG:
    """Per-sample generators for one training step; draws are stacked over the micro-batch."""

    def __init__(self, seed: int, step: int, positions: torch.Tensor, device: torch.device | str = "cpu"):
        self.seed, self.step, self.device = seed, step, torch.device(device)
        self.positions = [int(p) for p in positions.tolist()]

    def _gens(self, stream: str) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(mix_seed(self.seed, self.step, p, stream)) for p in self.positions]

    def randn(self, stream: str, *shape: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Standard normal draws of shape (B, *shape), on `device` (default: the step's device)."""
        out = torch.stack([torch.randn(shape, generator=g) for g in self._gens(stream)])
        return out.to(device or self.device, non_blocking=True)

    def rand(self, stream: str, *shape: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Uniform [0, 1) draws of shape (B, *shape), on `device` (default: the step's device)."""
        out = torch.stack([torch.rand(shape, generator=g) for g in self._gens(stream)])
        return out.to(device or self.device, non_blocking=True)

    def step_generator(self, stream: str) -> torch.Generator:
        """One generator shared by every process for a draw made once per global step."""
        return torch.Generator().manual_seed(mix_seed(self.seed, self.step, stream))
