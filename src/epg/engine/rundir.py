"""One process (group) per run directory: an advisory lock held for as long as a Trainer trains there."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class RunDirInUseError(RuntimeError):
    """Another process is training in this run directory."""


# Locks this process holds, by resolved run directory: a second Trainer in the same process (a test, a notebook
# re-run) shares the lock instead of refusing itself.
_HELD: dict[Path, tuple[int, int]] = {}


def acquire(run_dir: Path) -> Path:
    """Take the run directory's lock (re-entrant within a process); refuse, naming the holder, if it is taken."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        fd, count = _HELD[key]
        _HELD[key] = (fd, count + 1)
        return key
    path = key / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirInUseError(f"{run_dir} is in use by {holder}; wait for it to finish, stop it, "
                               "or use another --run-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD[key] = (fd, 1)
    return key


def release(key: Path) -> None:
    """Give back one hold on the lock taken by `acquire`; the last one unlocks the directory."""
    if key not in _HELD:
        return
    fd, count = _HELD[key]
    if count > 1:
        _HELD[key] = (fd, count - 1)
        return
    del _HELD[key]
    os.ftruncate(fd, 0)
    os.close(fd)  # closing the descriptor drops the flock
