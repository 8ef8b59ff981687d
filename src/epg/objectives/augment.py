"""Stage-1 view augmentations in plain torch, batched, with per-sample parameters (METHOD.md §3 item 7).

Every random parameter comes from the sample's own generator (SampleRNG), so a resumed or re-split run
sees exactly the same views. Images are float in [0, 1] (NCHW) inside this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from epg.rng import SampleRNG

BLUR_SIGMA_MIN, BLUR_SIGMA_MAX = 0.1, 2.0


@dataclass(frozen=True)
class ViewSpec:
    """One view's probabilities (MoCo v3 / BYOL: view 1 always blurred, view 2 sometimes solarised)."""

    name: str
    blur_p: float
    solarize_p: float
    crop_min_scale: float = 0.08
    jitter_p: float = 0.8
    gray_p: float = 0.2
    # Not in the paper (its jitter is colour, a no-op on 1 channel): brightness/contrast jitter of grey images and
    # random erasing, for the CPU presets (benchmarks/results/stage1_recipe.md).
    grey_jitter_p: float = 0.0
    grey_strength: float = 0.4
    erase_p: float = 0.0


def random_resized_crop_flip(x: torch.Tensor, rng: SampleRNG, stream: str, min_scale: float) -> torch.Tensor:
    """RandomResizedCrop(scale=(min_scale, 1), ratio=(3/4, 4/3)) + horizontal flip, as one bilinear resample."""
    u = rng.rand(stream + ".crop", 5).to(x.device)
    area = min_scale + (1.0 - min_scale) * u[:, 0]
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx = -1.0 + 2.0 * ((1.0 - w) * u[:, 2] + w / 2)
    cy = -1.0 + 2.0 * ((1.0 - h) * u[:, 3] + h / 2)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    v, delta = maxc, maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-8), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-8)
    h = torch.where(maxc == r, ((g - b) / d) % 6, torch.where(maxc == g, (b - r) / d + 2, (r - g) / d + 4))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(x: torch.Tensor, u: torch.Tensor, b: float = 0.4, c: float = 0.4, s: float = 0.2,
                 h: float = 0.1) -> torch.Tensor:
    """ColorJitter(b, c, s, h) with factors from u (B, 4) ∈ [0, 1); fixed order brightness→contrast→saturation→hue."""
    col = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    x = (x * col(1 - b + 2 * b * u[:, 0])).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + col(1 - c + 2 * c * u[:, 1]) * (x - mean)).clamp(0, 1)
    x = (_gray(x) + col(1 - s + 2 * s * u[:, 2]) * (x - _gray(x))).clamp(0, 1)
    hsv = _rgb_to_hsv(x)
    hsv = torch.stack([(hsv[:, 0] + (-h + 2 * h * u[:, 3]).view(-1, 1, 1)) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    return _hsv_to_rgb(hsv).clamp(0, 1)


def grey_jitter(x: torch.Tensor, u: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness then contrast (about the image mean), factors 1 ± strength from u (B, 2) ∈ [0, 1)."""
    col = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    x = (x * col(1 - strength + 2 * strength * u[:, 0])).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + col(1 - strength + 2 * strength * u[:, 1]) * (x - mean)).clamp(0, 1)


def random_erase(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Zero one rectangle of area 2–33 % of the image, aspect ratio 0.3–3.3, position from u (B, 4) ∈ [0, 1)."""
    _, _, hh, ww = x.shape
    area = 0.02 + (0.33 - 0.02) * u[:, 0]
    log_ratio = math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * u[:, 1]
    eh = (torch.sqrt(area / torch.exp(log_ratio)) * hh).round().clamp(1, hh)
    ew = (torch.sqrt(area * torch.exp(log_ratio)) * ww).round().clamp(1, ww)
    top = ((hh - eh + 1) * u[:, 2]).floor().clamp(max=hh - 1)
    left = ((ww - ew + 1) * u[:, 3]).floor().clamp(max=ww - 1)
    rows = torch.arange(hh, device=x.device).view(1, -1, 1)
    cols = torch.arange(ww, device=x.device).view(1, 1, -1)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
    return x.masked_fill(inside[:, None], 0.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample σ (pixels), reflect padding."""
    bsz, ch, hh, ww = x.shape
    # The radius is fixed by the largest σ of the augmentation, not of this batch, so that a sample's view
    # does not depend on which other samples share its batch.
    radius = max(1, min(int(math.ceil(3 * BLUR_SIGMA_MAX)), (min(hh, ww) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(ch, 0)
    y = F.pad(x.reshape(1, bsz * ch, hh, ww), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=bsz * ch)
    y = F.conv2d(y, kernel[:, None, :, None], groups=bsz * ch)
    return y.reshape(bsz, ch, hh, ww)


def augment_view(images: torch.Tensor, rng: SampleRNG, spec: ViewSpec) -> torch.Tensor:
    """uint8 NCHW images → one strongly augmented view, float in [0, 1]."""
    x = random_resized_crop_flip(images.float() / 255.0, rng, spec.name, spec.crop_min_scale)
    u = rng.rand(spec.name + ".ops", 9).to(x.device)
    gate = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    if x.shape[1] == 3:  # colour ops are no-ops on single-channel images
        x = torch.where(gate(u[:, 0] < spec.jitter_p), color_jitter(x, u[:, 1:5]), x)
        x = torch.where(gate(u[:, 5] < spec.gray_p), _gray(x), x)
    # The extra ops draw from a stream of their own, so that the paper's views are unchanged when they are off.
    e = rng.rand(spec.name + ".grey", 8).to(x.device) if spec.grey_jitter_p > 0 or spec.erase_p > 0 else None
    if spec.grey_jitter_p > 0 and x.shape[1] == 1:
        x = torch.where(gate(e[:, 0] < spec.grey_jitter_p), grey_jitter(x, e[:, 1:3], spec.grey_strength), x)
    sigma = BLUR_SIGMA_MIN + (BLUR_SIGMA_MAX - BLUR_SIGMA_MIN) * u[:, 6]
    if spec.blur_p > 0:
        x = torch.where(gate(u[:, 7] < spec.blur_p), gaussian_blur(x, sigma), x)
    if spec.solarize_p > 0:
        x = torch.where(gate(u[:, 8] < spec.solarize_p), torch.where(x >= 0.5, 1.0 - x, x), x)
    if spec.erase_p > 0:
        x = torch.where(gate(e[:, 3] < spec.erase_p), random_erase(x, e[:, 4:8]), x)
    return x.clamp(0, 1)
