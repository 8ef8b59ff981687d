"""ADM-style `.npz` files: `arr_0` uint8 N×H×W×C images, optional `arr_1` integer labels."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .base import ImageDataset, check_resolution
from .errors import DataError

_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header; name and extra-field lengths end it


def read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from the header of an open `.npy` stream, which is left at the data."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    return np.lib.format.read_array_header_2_0(stream)


def _member_header(path: Path, member: str) -> tuple[tuple[int, ...], np.dtype, bool, int | None]:
    """(shape, dtype, fortran order, byte offset of the data or None) of `member` inside the npz.

    The offset is given only for uncompressed members (np.savez), whose bytes can then be memory-mapped
    straight from the zip file instead of being read whole into RAM."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        with archive.open(info) as stream:
            shape, fortran, dtype = read_npy_header(stream)
            header_length = stream.tell()
    offset = None
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as file:
            file.seek(info.header_offset)
            local = file.read(_LOCAL_HEADER_SIZE)
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        offset = info.header_offset + _LOCAL_HEADER_SIZE + name_length + extra_length + header_length
    return shape, dtype, fortran, offset


class NpzDataset(ImageDataset):
    """Images of an `.npz` (`arr_0` uint8 NHWC, C = 1 or 3, square); memory-mapped if stored uncompressed."""

    _lazy_attributes = ("_images",)

    def __init__(self, path: str | os.PathLike[str], resolution: int | None = None):
        self.path = Path(path)
        try:
            shape, dtype, fortran, self._offset = _member_header(self.path, "arr_0.npy")
            with np.load(self.path) as arrays:
                labels = arrays["arr_1"] if "arr_1" in arrays.files else None
        except KeyError as error:
            raise DataError(f"{self.path} has no arr_0 (expected ADM-style arr_0 uint8 N×H×W×C images)") from error
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise DataError(f"cannot read {self.path} as an .npz ({error})") from error
        square = len(shape) == 4 and shape[1] == shape[2] and shape[3] in (1, 3)
        if dtype != np.uint8 or not square or fortran:
            order = " (Fortran order)" if fortran else ""
            raise DataError(f"{self.path}: arr_0 is {dtype} {shape}{order}, expected uint8 N×H×W×C with H = W and "
                            "C = 1 or 3 (save it with np.savez(path, arr_0=images.astype(np.uint8)))")
        self._shape = shape
        if labels is not None and (labels.shape != (shape[0],) or labels.dtype.kind not in "iu"
                                   or (len(labels) and labels.min() < 0)):
            raise DataError(f"{self.path}: arr_1 is {labels.dtype} {labels.shape}, expected {shape[0]} non-negative "
                            "integer labels")
        self._labels = None if labels is None else labels.astype(np.int64)
        self.num_classes = 0 if labels is None or not len(labels) else int(labels.max()) + 1
        self.class_names = None
        self.channels = shape[3]
        self.resolution = check_resolution(resolution, shape[1], str(self.path))
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return self._shape[0]

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        if self._images is None:
            if self._offset is None:  # compressed (np.savez_compressed): no way around decompressing it all
                with np.load(self.path) as arrays:
                    self._images = arrays["arr_0"]
            else:
                self._images = np.memmap(self.path, np.uint8, "r", self._offset, self._shape)
        label = 0 if self._labels is None else int(self._labels[index])
        return np.array(self._images[index]), label
