"""Pixel normalisation (METHOD.md §1): uint8 images ⇄ the network's space, and clamping in *pixel* space."""

from __future__ import annotations

import torch

NORMALIZATIONS = ("minus_one", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _mean_std(normalization: str, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, scale) in [0, 255] units so that x_norm = (x − mean)/scale."""
    if normalization == "minus_one":
        mean = torch.full((channels,), 127.5)
        scale = torch.full((channels,), 127.5)
    elif normalization == "imagenet":
        if channels != 3:
            raise ValueError(f"'imagenet' normalisation needs 3 channels, got {channels}; use 'minus_one'")
        mean = torch.tensor(IMAGENET_MEAN) * 255.0
        scale = 2.0 * torch.tensor(IMAGENET_STD) * 255.0
    else:
        raise ValueError(f"unknown normalisation {normalization!r}; choose one of {NORMALIZATIONS}")
    return mean.view(1, -1, 1, 1).to(device), scale.view(1, -1, 1, 1).to(device)


def normalize(images: torch.Tensor, normalization: str = "minus_one") -> torch.Tensor:
    """uint8 (or [0, 255] float) NCHW images → the network's float32 space."""
    mean, scale = _mean_std(normalization, images.shape[1], images.device)
    return (images.float() - mean) / scale


def to_pixels(x: torch.Tensor, normalization: str = "minus_one") -> torch.Tensor:
    """Network space → float pixels clamped to [0, 255] (the valid range of every channel)."""
    mean, scale = _mean_std(normalization, x.shape[1], x.device)
    return (x.float() * scale + mean).clamp(0.0, 255.0)


def clamp_in_pixel_space(x: torch.Tensor, normalization: str = "minus_one") -> torch.Tensor:
    """Clamp a normalised x̂0 to the valid pixel range — not to [−1, 1] of normalised space (METHOD.md §1)."""
    return normalize(to_pixels(x, normalization), normalization).to(x.dtype)


def to_uint8(x: torch.Tensor, normalization: str = "minus_one") -> torch.Tensor:
    """Network space → uint8 NCHW images, rounded to nearest."""
    return to_pixels(x, normalization).round().to(torch.uint8)
