"""NaN/Inf during training: the error, and the bookkeeping that finds the first bad step without a host sync."""

from __future__ import annotations

import torch


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf: the message names the step, the loss term and the last good checkpoint."""


class Health:
    """NaN/Inf bookkeeping kept on the device and read only at log and checkpoint steps (no per-step sync)."""

    def __init__(self, device: torch.device, skipped: float):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.mask: torch.Tensor | None = None
        self.skipped = torch.full((), skipped, device=device)

    def record(self, step: int, ok: torch.Tensor) -> None:
        """`ok`: whether each loss term (and the gradients) of training step `step` was finite."""
        finite = ok.all()
        newly_bad = (self.first_bad < 0) & ~finite
        self.mask = ~ok if self.mask is None else torch.where(newly_bad, ~ok, self.mask)
        self.first_bad = torch.where(newly_bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.skipped += (~finite).float()
