"""The dataset interface every source implements: uint8 CHW images with integer labels."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError


class ImageDataset(Dataset):
    """A map-style dataset of square uint8 images; `__getitem__(i)` → (CHW uint8 tensor, label).

    Subclasses set `num_classes` (0 when the source has no labels; every label is then 0), `channels`,
    `resolution` and `class_names`, and implement `__len__` and `_load(i)` → (HWC uint8 array, label).
    File handles and memory maps are opened lazily and dropped when pickled, so each DataLoader worker
    opens its own.
    """

    num_classes: int
    channels: int
    resolution: int
    class_names: list[str] | None

    _lazy_attributes: tuple[str, ...] = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        array, label = self._load(index % len(self))
        # Memory maps and np.frombuffer views are read-only; torch wants a writable array it may own.
        image = torch.from_numpy(np.require(array, np.uint8, ["C", "W"])).permute(2, 0, 1).contiguous()
        return image, int(label)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in self._lazy_attributes:
            state[name] = None
        return state

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {self.channels}×{self.resolution}×{self.resolution}, "
                f"{self.num_classes} classes)")


def check_resolution(requested: int | None, native: int, what: str) -> int:
    """The resolution to serve: `native` when none is requested or it matches, else a DataError."""
    if requested is None or requested == native:
        return native
    raise DataError(f"{what} holds {native}×{native} images, not {requested}×{requested}: "
                    f"prepare a copy at that size with `epg prepare` (or request resolution {native})")
