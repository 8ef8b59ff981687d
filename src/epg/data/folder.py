"""ImageFolder trees (`class/*.jpg`, labels = sorted folder names) and ImageNet's flat validation layout."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .base import ImageDataset
from .errors import DataError
from .images import IMAGE_EXTENSIONS, DecodeFailure, center_crop_arr, decode_rgb, is_image_file

_LAYOUT_HINT = f"expected <dir>/<class>/<image>{{{','.join(IMAGE_EXTENSIONS)}}}"


def _is_loop(entry: Path, root: Path) -> bool:
    """A class folder that is a symlink to the tree itself (or above it) would list every class again."""
    if not entry.is_symlink():
        return False
    target, top = entry.resolve(), root.resolve()
    return target == top or target in top.parents


def _class_folders(root: Path, notes: list[str]) -> list[tuple[str, list[Path]]]:
    # Recursive below each class folder, as a class may be split into sub-folders.
    classes = []
    for entry in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name):
        if _is_loop(entry, root):
            notes.append(f"skipped {shown(entry.name)}: a symlink back into {root} (a loop), not a class")
            continue
        files = [Path(top) / name for top, _, names in os.walk(entry) for name in names if is_image_file(name)]
        if files:
            classes.append((entry.name, sorted(files)))
        else:
            notes.append(f"class folder {shown(entry.name)} holds no image: it is not a class of this dataset")
    return classes


def shown(name: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 (kept as surrogates by Python) become �."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def scan_class_folders(root: Path, class_names: list[str] | None = None, notes: list[str] | None = None,
                       ) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of an ImageFolder tree, in class-then-path order.

    Labels index the sorted folder names, or `class_names` when given (e.g. the training set's classes.json,
    so that a validation tree missing some classes keeps the training labels). What was left out and why
    (empty class folders, symlink loops) is appended to `notes`, or warned about when no list is given."""
    found: list[str] = []
    classes = _class_folders(root, found)
    if notes is None:
        for note in found:
            warnings.warn(note, stacklevel=2)
    else:
        notes.extend(found)
    if not classes:
        raise DataError(f"no class folders with images in {root} ({_LAYOUT_HINT}; for a flat validation folder pass "
                        "--val-labels FILE)")
    names = class_names or [name for name, _ in classes]
    unknown = [name for name, _ in classes if name not in names]
    if unknown:
        raise DataError(f"class folder {root / unknown[0]} is not among the {len(names)} given class names")
    position = {name: k for k, name in enumerate(names)}
    files = [f for _, group in classes for f in group]
    labels = [position[name] for name, group in classes for _ in group]
    return files, labels, list(names)


def read_label_file(path: Path) -> dict[str, str]:
    """Map image stem → class name from lines `filename wnid` or a CSV `ImageId,wnid …`
    (ImageNet's LOC_val_solution.csv, whose second column starts with the wnid)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"cannot read the label file {path} ({error.strerror})") from error
    mapping = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(",") if "," in line else line.split()
        label = fields[1].split() if len(fields) > 1 else []
        if not label:
            raise DataError(f"{path}:{number}: expected `filename wnid` or `ImageId,wnid ...`, got {line!r}")
        if fields[0] == "ImageId":  # the CSV header
            continue
        name = fields[0].strip()
        mapping[Path(name).stem if is_image_file(name) else name] = label[0]
    if not mapping:
        raise DataError(f"the label file {path} holds no labels")
    return mapping


def scan_flat_folder(root: Path, label_file: Path, class_names: list[str] | None = None,
                     ) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of a flat folder of images labelled by `label_file`, in name order."""
    mapping = read_label_file(label_file)
    files = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p.name))
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) directly inside {root}")
    unlabelled = [f.name for f in files if f.stem not in mapping]
    if unlabelled:
        raise DataError(f"{len(unlabelled)} images in {root} have no label in {label_file} (first: {unlabelled[0]}): "
                        "check that the label file belongs to this folder")
    names = class_names or sorted(set(mapping[f.stem] for f in files))
    position = {name: k for k, name in enumerate(names)}
    unknown = sorted({mapping[f.stem] for f in files} - set(position))
    if unknown:
        raise DataError(f"class {unknown[0]} of {label_file} is not among the {len(names)} given class names")
    return files, [position[mapping[f.stem]] for f in files], list(names)


class ImageFolderDataset(ImageDataset):
    """Decodes an ImageFolder tree on the fly, RGB, ADM-centre-cropped to `resolution`.

    Without a resolution the first image's size is used (it must be square); images of other sizes are
    then centre-cropped to it too. Bad files raise DataError: `epg prepare` skips and reports them instead.
    """

    def __init__(self, root: str | os.PathLike[str], resolution: int | None = None):
        self.root = Path(root)
        files, labels, self.class_names = scan_class_folders(self.root)
        # Strings pickle far smaller than Path objects when workers are spawned.
        self._files = [str(f) for f in files]
        self._labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.class_names)
        self.channels = 3
        if resolution is None:
            try:
                with Image.open(self._files[0]) as first:
                    width, height = first.size
            except OSError as error:
                raise DataError(f"cannot read {self._files[0]} to infer the resolution: pass one") from error
            if width != height:
                raise DataError(f"{self._files[0]} is {width}×{height}, not square: pass a resolution to centre-crop "
                                "to, or run `epg prepare`")
            resolution = width
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self._files)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        path = self._files[index]
        try:
            image, _ = decode_rgb(path)
        except DecodeFailure as failure:
            raise DataError(f"cannot read {path} ({failure}): `epg prepare` skips such files") from failure
        return center_crop_arr(image, self.resolution), int(self._labels[index])
