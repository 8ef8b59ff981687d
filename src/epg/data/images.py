"""Decoding any image file to 8-bit RGB, and ADM's centre crop (the ImageNet preprocessing of ADM/DiT/EPG)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Modes Pillow converts to RGB by itself (for CMYK JPEGs it undoes Adobe's inverted storage).
_PLAIN_MODES = ("RGB", "L", "1", "P", "CMYK")


class DecodeFailure(Exception):
    """An image file that cannot become an RGB image; `reason` is a short key counted in the report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_image_file(name: str) -> bool:
    """True for the extensions `epg` reads (case-insensitive, so ImageNet's `.JPEG` counts)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's own convert() clips 16-bit values at 255; scale the full range to 8 bits instead.
    values = np.asarray(image).astype(np.int64).clip(0, 65535)
    grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _alpha_to_rgb(image: Image.Image) -> Image.Image:
    # Colours under transparent pixels are arbitrary (often black); show the image as a viewer would on white.
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded PIL image of any common mode to 8-bit RGB; raises DecodeFailure for odd modes."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        return _alpha_to_rgb(image)
    if mode in _ALPHA_MODES:
        return _alpha_to_rgb(image)
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    if mode in _PLAIN_MODES:
        return image if mode == "RGB" else image.convert("RGB")
    raise DecodeFailure("unsupported_mode", f"image mode {mode} has no defined 8-bit RGB conversion")


def decode_rgb(path: str | os.PathLike[str]) -> tuple[Image.Image, str]:
    """Open, fully decode and convert `path` to RGB → (image, original mode); raises DecodeFailure."""
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise DecodeFailure("unreadable", f"{type(error).__name__}: {error.strerror}") from error
    if size == 0:
        raise DecodeFailure("empty", "zero-byte file")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            rgb = to_rgb(image)
    except DecodeFailure:
        raise
    except Image.DecompressionBombError as error:
        raise DecodeFailure("too_large", str(error)) from error
    except Image.UnidentifiedImageError as error:
        raise DecodeFailure("unreadable", "not an image Pillow can identify (corrupt?)") from error
    except (OSError, SyntaxError, ValueError) as error:
        reason = "truncated" if "truncated" in str(error).lower() else "decode_error"
        raise DecodeFailure(reason, f"{type(error).__name__}: {error}") from error
    return rgb, mode


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM's preprocessing: halve with BOX while the short side ≥ 2·size, BICUBIC to short side = size,
    then take the central size×size square. Returns an HWC uint8 array."""
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    new_size = (round(image.width * scale), round(image.height * scale))
    image = image.resize(new_size, resample=Image.Resampling.BICUBIC)
    array = np.asarray(image)
    top = (array.shape[0] - size) // 2
    left = (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]
