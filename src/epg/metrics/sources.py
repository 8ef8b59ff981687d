"""Samples and references as uint8 NCHW batches: arrays, ADM `.npz`, folders, datasets (METHOD.md §7)."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from epg.data.images import DecodeFailure, decode_rgb, is_image_file
from epg.data.npz import read_npy_header
from epg.metrics.errors import MetricsError

_NPZ_HINT = "save samples as np.savez(path, arr_0=images) with uint8 N×H×W×C images, C = 1 or 3"
_SPLIT_SUFFIX = re.compile(r"^(?P<source>.+?)(-(?P<split>train|test|val|validation))?(@(?P<res>\d+))?$")


def _check_images(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if dtype != np.uint8:
        raise MetricsError(f"{where} holds {dtype} values, not uint8 pixels: {_NPZ_HINT}")
    if len(shape) != 4:
        raise MetricsError(f"{where} has shape {tuple(shape)}, not the 4-D N×H×W×C of ADM batches: {_NPZ_HINT}")
    if shape[3] not in (1, 3):
        raise MetricsError(f"{where} has shape {tuple(shape)}: its last axis ({shape[3]}) is not 1 or 3 channels "
                           f"(NCHW instead of NHWC?): {_NPZ_HINT}")


class ImageSource:
    """uint8 images streamed as NCHW batches; `take(n)` keeps only the first n (METHOD.md §7)."""

    def __init__(self, name: str, count: int) -> None:
        self.name = name
        self.count = count

    def take(self, n: int | None) -> ImageSource:
        """Use only the first `n` images (all when None)."""
        if n is not None:
            if not 0 < n <= self.count:
                raise MetricsError(f"{self.name} holds {self.count} images; cannot use {n} of them")
            self.count = n
        return self

    def identity(self) -> str:
        """A string that changes whenever the images may have changed; keys the reference cache."""
        raise NotImplementedError

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The images, `batch_size` at a time, as uint8 NCHW tensors."""
        raise NotImplementedError

    def geometry(self) -> tuple[int, int, int]:
        """(height, width, channels) of the first image."""
        first = next(iter(self.batches(1)))
        return first.shape[2], first.shape[3], first.shape[1]


class ArrayImages(ImageSource):
    """Images already in memory as a uint8 NHWC array."""

    def __init__(self, array: np.ndarray, name: str = "samples") -> None:
        _check_images(array.shape, array.dtype, name)
        super().__init__(name, len(array))
        self.array = array

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.count, batch_size):
            chunk = np.ascontiguousarray(self.array[start : min(start + batch_size, self.count)])
            yield torch.from_numpy(chunk).permute(0, 3, 1, 2)


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def npz_members(path: Path) -> list[str]:
    """Names of the arrays in an `.npz`, without loading any of them."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name.removesuffix(".npy") for name in archive.namelist()]
    except (OSError, zipfile.BadZipFile) as error:
        raise MetricsError(f"{path} is not a readable .npz ({error}): {_NPZ_HINT}") from error


class NpzImages(ImageSource):
    """`arr_0` of an ADM-style `.npz`, streamed from the archive so 50k images never sit in memory at once."""

    def __init__(self, path: Path) -> None:
        if "arr_0" not in npz_members(path):
            raise MetricsError(f"{path} has no arr_0 (the ADM key for the images): {_NPZ_HINT}")
        try:
            with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as stream:
                shape, fortran, dtype = read_npy_header(stream)
        except (OSError, ValueError, zipfile.BadZipFile, zlib.error) as error:
            raise MetricsError(f"{path}: arr_0 is not a readable array ({error}): {_NPZ_HINT}") from error
        _check_images(shape, dtype, f"{path} (arr_0)")
        if fortran:
            raise MetricsError(f"{path}: arr_0 is stored in Fortran order; save np.ascontiguousarray(images)")
        super().__init__(str(path), shape[0])
        self.path = path
        self.shape = shape

    def identity(self) -> str:
        return "npz:" + _file_identity(self.path)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        image_bytes = int(np.prod(self.shape[1:]))
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open("arr_0.npy") as stream:
                read_npy_header(stream)
                for start in range(0, self.count, batch_size):
                    n = min(batch_size, self.count - start)
                    data = bytearray(stream.read(n * image_bytes))
                    if len(data) != n * image_bytes:
                        raise MetricsError(f"{self.path}: arr_0 is truncated after {start} images")
                    chunk = np.frombuffer(data, np.uint8).reshape(n, *self.shape[1:])
                    yield torch.from_numpy(chunk).permute(0, 3, 1, 2)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise MetricsError(f"{self.path} is corrupt ({error}); re-create it") from error


class FolderImages(ImageSource):
    """png/jpg/jpeg/webp files under a folder (recursive, sorted by path), decoded to RGB."""

    def __init__(self, root: Path) -> None:
        files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p.name))
        if not files:
            raise MetricsError(f"{root} holds no .png/.jpg/.jpeg/.webp images (searched recursively)")
        super().__init__(str(root), len(files))
        self.root = root
        self.files = files

    def identity(self) -> str:
        listing = "\n".join(_file_identity(path) for path in self.files[: self.count])
        return f"folder:{self.root.resolve()}:" + hashlib.sha256(listing.encode()).hexdigest()

    def _decode(self, path: Path) -> np.ndarray:
        try:
            image, _ = decode_rgb(path)
        except DecodeFailure as error:
            raise MetricsError(f"cannot read image {path} ({error}); delete or replace it") from error
        return np.asarray(image)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        first: tuple[Path, tuple[int, ...]] | None = None
        for start in range(0, self.count, batch_size):
            arrays = []
            for path in self.files[start : min(start + batch_size, self.count)]:
                array = self._decode(path)
                first = first or (path, array.shape)
                if array.shape != first[1]:
                    raise MetricsError(f"{path} is {array.shape[1]}×{array.shape[0]} but {first[0]} is "
                                       f"{first[1][1]}×{first[1][0]}: all images of {self.root} must share one size")
                arrays.append(array)
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


class DatasetImages(ImageSource):
    """A dataset named like `fmnist-test` (source, then split; split defaults to train), via epg.data."""

    def __init__(self, name: str) -> None:
        # `fmnist-test@32`: the test split at the resolution the model sees (Fashion-MNIST padded to 32).
        match = _SPLIT_SUFFIX.match(name)
        source, split = match["source"], match["split"] or "train"
        self.resolution = int(match["res"]) if match["res"] else None
        try:
            from epg.data import open_dataset

            dataset = open_dataset(source, split=split, resolution=self.resolution)
        except (ImportError, ValueError, OSError) as error:
            raise MetricsError(f"{name!r} is no existing .npz, image folder or stats file, nor a dataset epg opens "
                               f"({error})") from error
        super().__init__(name, len(dataset))
        self.dataset = dataset
        self.source, self.split = source, split

    def identity(self) -> str:
        return f"dataset:{self.source}:{self.split}" + (f"@{self.resolution}" if self.resolution else "")

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.count, batch_size):
            stop = min(start + batch_size, self.count)
            yield torch.stack([self.dataset[i][0] for i in range(start, stop)])


def open_images(spec: str | os.PathLike[str] | np.ndarray, name: str = "samples") -> ImageSource:
    """Samples or a reference: uint8 NHWC array, `.npz` (arr_0), image folder or dataset name (§7)."""
    if isinstance(spec, np.ndarray):
        return ArrayImages(spec, name)
    path = Path(spec)
    if path.is_dir():
        return FolderImages(path)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise MetricsError(f"{path}: no such .npz file")
        return NpzImages(path)
    if path.exists():
        raise MetricsError(f"{path} is neither an .npz (arr_0 uint8 N×H×W×C) nor a folder of images")
    if path.suffix or os.sep in str(spec):
        raise MetricsError(f"{spec}: no such file or folder")
    return DatasetImages(str(spec))
