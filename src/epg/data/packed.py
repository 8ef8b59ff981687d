"""The packed format `epg prepare` writes: uint8 N×H×W×C `.npy` shards read through memory maps.

Layout of a packed directory:
    index.json        format, resolution, channels, num_classes, class_names, num_images,
                      labels (file name), shards [{file, count}]
    labels.npy        int64 (num_images,), in global image order
    shard-00000.npy   uint8 (count, H, W, C); shards concatenate in order to the global index
    classes.json      class names (ImageNet wnids) in label order
index.json is written last, so its presence means the directory is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from epg.atomic import atomic_write

from .base import ImageDataset, check_resolution
from .errors import DataError

FORMAT = "epg-packed-v1"
INDEX_NAME = "index.json"
LABELS_NAME = "labels.npy"
CLASSES_NAME = "classes.json"


def shard_name(shard: int) -> str:
    """File name of shard number `shard`."""
    return f"shard-{shard:05d}.npy"


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Save `array` as `.npy` atomically."""
    atomic_write(path, lambda file: np.lib.format.write_array(file, np.ascontiguousarray(array)))


def atomic_save_json(path: Path, value: Any) -> None:
    """Save `value` as indented JSON atomically."""
    atomic_write(path, lambda file: file.write((json.dumps(value, indent=1) + "\n").encode()))


def write_index(root: Path, shard_counts: list[int], labels: np.ndarray, resolution: int, class_names: list[str],
                channels: int = 3) -> None:
    """Finish a packed directory whose shards are written: labels, class names, then the index."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (sum(shard_counts),):
        raise ValueError(f"{len(labels)} labels for {sum(shard_counts)} images")
    atomic_save_npy(root / LABELS_NAME, labels)
    atomic_save_json(root / CLASSES_NAME, class_names)
    index = {"format": FORMAT, "resolution": resolution, "channels": channels, "num_classes": len(class_names),
             "class_names": class_names, "num_images": int(sum(shard_counts)), "labels": LABELS_NAME,
             "shards": [{"file": shard_name(k), "count": int(n)} for k, n in enumerate(shard_counts)]}
    atomic_save_json(root / INDEX_NAME, index)


def read_index(root: Path) -> dict[str, Any]:
    """The parsed index.json of a packed directory, checked to be one."""
    try:
        index = json.loads((root / INDEX_NAME).read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {root / INDEX_NAME} ({error}): rerun `epg prepare` for {root}") from error
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{root / INDEX_NAME} is not an epg packed index ({FORMAT}): rerun `epg prepare`")
    return index


class PackedDataset(ImageDataset):
    """Random access by global index into a packed directory; shards are memory-mapped on first use."""

    _lazy_attributes = ("_shards",)

    def __init__(self, root: str | os.PathLike[str], resolution: int | None = None):
        self.root = Path(root)
        index = read_index(self.root)
        try:
            native = int(index["resolution"])
            self.channels = int(index["channels"])
            self.num_classes = int(index["num_classes"])
            self.class_names = index.get("class_names")
            counts = [int(shard["count"]) for shard in index["shards"]]
            self._files = [self.root / shard["file"] for shard in index["shards"]]
            labels_path = self.root / index["labels"]
            num_images = int(index["num_images"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{self.root / INDEX_NAME} is malformed ({error!r}): rerun `epg prepare`") from error
        self.resolution = check_resolution(resolution, native, str(self.root))
        missing = [f.name for f, n in zip(self._files, counts) if n and not f.is_file()]
        if missing or not labels_path.is_file():
            lost = missing[:3] or [labels_path.name]
            raise DataError(f"{self.root} lacks {', '.join(lost)}: rerun `epg prepare` with the same arguments")
        self._labels = np.load(labels_path)
        self._ends = np.cumsum(counts)
        if len(self._labels) != num_images or (counts and self._ends[-1] != num_images):
            raise DataError(f"{self.root}: shard sizes, labels and image count disagree; rerun `epg prepare`")
        self._shards: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._labels)

    def _shard(self, shard: int) -> np.ndarray:
        if self._shards is None:
            self._shards = {}
        if shard not in self._shards:
            array = np.load(self._files[shard], mmap_mode="r")
            expected = (self.resolution, self.resolution, self.channels)
            if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != expected:
                raise DataError(f"{self._files[shard]} holds {array.dtype} {array.shape}, not uint8 N×{expected}")
            self._shards[shard] = array
        return self._shards[shard]

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        shard = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[shard - 1]) if shard else 0
        return np.array(self._shard(shard)[index - start]), int(self._labels[index])
