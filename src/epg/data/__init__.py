"""Data: every source (Fashion-MNIST, packed shards, ImageFolder trees, `.npz`) as uint8 CHW images + labels.

`open_dataset` is the one entry point; `epg prepare` (see `prepare.py`) turns ImageNet into packed shards.
"""

from __future__ import annotations

from pathlib import Path

from .base import ImageDataset
from .errors import DataError
from .fmnist import FashionMNIST
from .folder import ImageFolderDataset
from .npz import NpzDataset
from .packed import INDEX_NAME, PackedDataset
from .prepare import SETTINGS_NAME, prepare_folder

__all__ = ["DataError", "FashionMNIST", "ImageDataset", "ImageFolderDataset", "NpzDataset", "PackedDataset",
           "open_dataset", "prepare_folder"]


def open_dataset(source: str, split: str = "train", resolution: int | None = None, fmnist_dir: str | None = None,
                 ) -> ImageDataset:
    """Open `source`: "fmnist", a packed directory, an ImageFolder tree or an `.npz` file.

    `split` ("train" or "test") selects the Fashion-MNIST split; a path is a single split and ignores it.
    `resolution` must match the data (Fashion-MNIST may also be zero-padded 28 → 32; an ImageFolder is
    centre-cropped to it); None serves the native resolution.
    """
    if source == "fmnist":
        return FashionMNIST(split, resolution, fmnist_dir)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".npz":
        return NpzDataset(path, resolution)
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return PackedDataset(path, resolution)
        if (path / SETTINGS_NAME).is_file():
            raise DataError(f"the preparation of {path} is unfinished: rerun the same `epg prepare` to resume it")
        return ImageFolderDataset(path, resolution)
    raise DataError(f"no dataset at {source!r}: expected 'fmnist', a packed directory (from `epg prepare`), "
                    "an ImageFolder tree (<dir>/<class>/<image>) or an .npz file")
