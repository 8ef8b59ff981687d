"""Fashion-MNIST from its IDX files (the Debian package `dataset-fashion-mnist`), the CPU presets' data."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from .base import ImageDataset
from .errors import DataError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NATIVE_RESOLUTION = 28
_PREFIXES = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x0803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x0801  # unsigned bytes, 1 dimension


def _find_file(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"Fashion-MNIST file {stem}(.gz) not found in {directory}: install it with `apt-get install "
                    "dataset-fashion-mnist`, or point EPG_FMNIST_DIR (or fmnist_dir) at a folder holding the IDX files")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """The array stored in an IDX file (big-endian header: magic, then one uint32 per dimension)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path} ({error}): reinstall dataset-fashion-mnist") from error
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header or struct.unpack(">I", data[:4])[0] != magic:
        raise DataError(f"{path} is not an IDX file of the expected kind: reinstall dataset-fashion-mnist")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: reinstall dataset-fashion-mnist")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


class FashionMNIST(ImageDataset):
    """Fashion-MNIST, 1×28×28 (or zero-padded to 1×32×32 for patch-4 models), 10 classes."""

    _lazy_attributes = ("_images",)

    def __init__(self, split: str = "train", resolution: int | None = None, directory: str | None = None):
        if split not in _PREFIXES:
            raise DataError(f"Fashion-MNIST has splits {sorted(_PREFIXES)}, not {split!r}")
        if resolution not in (None, NATIVE_RESOLUTION, 32):
            raise DataError(f"Fashion-MNIST is 28×28 (served as 28 or zero-padded to 32), not "
                            f"{resolution}×{resolution}")
        folder = Path(directory or os.environ.get("EPG_FMNIST_DIR") or DEFAULT_DIR)
        prefix = _PREFIXES[split]
        self._images_path = _find_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _read_idx(_find_file(folder, f"{prefix}-labels-idx1-ubyte"), _LABELS_MAGIC)
        self._labels = labels.astype(np.int64)
        self._images: np.ndarray | None = None
        self.split = split
        self.num_classes = len(CLASS_NAMES)
        self.channels = 1
        self.resolution = resolution or NATIVE_RESOLUTION
        self.class_names = list(CLASS_NAMES)
        self._pad = (self.resolution - NATIVE_RESOLUTION) // 2

    def __len__(self) -> int:
        return len(self._labels)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        if self._images is None:
            images = _read_idx(self._images_path, _IMAGES_MAGIC)
            if len(images) != len(self._labels):
                raise DataError(f"{self._images_path} and its labels file disagree on the image count")
            self._images = images
        image = self._images[index]
        if self._pad:
            image = np.pad(image, self._pad)
        return image[:, :, None], int(self._labels[index])
