"""The one atomic writer: files and directories appear whole or not at all, and a failed write leaves nothing.

Everything is written under a temporary sibling name ``.NAME.tmp-PID``, fsynced, then renamed over NAME; the
rename is made durable by fsyncing the parent directory. A write that fails (a full disk, a signal) removes
its temporary; one killed outright leaves it behind, and `remove_stale` clears such leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

_TMP = re.compile(r"^.+\.tmp-\d+$")


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def describe_os_error(error: BaseException) -> str:
    """A short reason for a failed write: the disk-full case in words a user acts on."""
    text = str(error)
    if getattr(error, "errno", None) == errno.ENOSPC or "os error 28" in text or "No space left" in text:
        return "no space left on the device"
    return text


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to fill (a file or a directory); on success rename it to `path`."""
    path = Path(path)
    tmp = temporary_name(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir():
            fsync_dir(tmp)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through `write(file)`: readers see the old file or the whole new one."""
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode()))


def remove_stale(folder: Path) -> list[str]:
    """Remove temporaries left in `folder` by a killed writer; returns their names. Call it only while no
    other process writes there (the run directory's lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if _TMP.match(p.name))
    for p in stale:
        _remove(p)
    return [p.name for p in stale]
