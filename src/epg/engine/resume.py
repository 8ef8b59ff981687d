"""Which checkpoint a run resumes from, and the run directory's own housekeeping (lock, leftovers, restarts)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from epg.atomic import atomic_write_text, remove_stale
from epg.config import Config, ConfigError, config_from_dict, identity_diffs
from epg.engine import checkpoint as ck

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


def _check_run_config(run_dir: Path, cfg: Config) -> None:
    """A run directory belongs to one model: refuse to resume it with another."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    try:
        saved = config_from_dict(json.loads(path.read_text()))
    except ValueError as e:
        raise ConfigError(f"{path} is unreadable ({e}); restore it or use a new --run-dir") from None
    diffs = identity_diffs(saved, cfg)
    if diffs:
        raise ConfigError(f"{run_dir} holds a run of another model ({'; '.join(diffs[:4])}); "
                          "use a new --run-dir or the original settings")


def abandon_checkpoints(ckpt_root: Path) -> list[str]:
    """`--restart`: rename every checkpoint to ``abandoned-<time>-step-…`` (kept, never resumed or pruned)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for _, path in ck.list_checkpoints(ckpt_root):
        path.rename(path.with_name(f"abandoned-{stamp}-{path.name}"))
        moved.append(path.name)
    return moved


def open_run_dir(run_dir: Path, cfg: Config, restart: bool) -> Path:
    """On rank 0: lock the run directory, check it holds this model, clear leftovers; returns the lock's key."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = acquire(run_dir)
    try:
        _check_run_config(run_dir, cfg)
        ckpt_root = run_dir / "checkpoints"
        stale = remove_stale(ckpt_root)  # safe: the lock says no one else writes here
        if stale:
            print(f"epg: removed {len(stale)} unfinished checkpoint write(s) left by a killed run: {', '.join(stale)}")
        if restart:
            moved = abandon_checkpoints(ckpt_root)
            if moved:
                print(f"epg: --restart: starting at step 0; kept {len(moved)} old checkpoint(s) as abandoned-*")
        atomic_write_text(run_dir / "config.json", cfg.to_json())
    except BaseException:
        release(key)
        raise
    return key


class Candidates:
    """The run's own good checkpoints, newest first, verified lazily; foreign and broken ones are named in a
    warning and skipped. `refuse()` raises when the run has checkpoints but none of them could be used."""

    def __init__(self, ckpt_root: Path, cfg: Config):
        self.ckpt_root, self.cfg = ckpt_root, cfg
        self.broken: list[str] = []

    def __iter__(self) -> Iterator[Path]:
        for _, path in ck.list_checkpoints(self.ckpt_root):
            try:
                ck.check_usable(path, self.cfg)
            except ck.ForeignCheckpointError as e:
                warnings.warn(f"skipping foreign checkpoint {path.name}: {e}", stacklevel=2)
                continue
            except ck.CheckpointError as e:
                self.skip(path, e)
                continue
            yield path

    def skip(self, path: Path, error: Exception) -> None:
        self.broken.append(f"{path.name}: {error}")
        warnings.warn(f"skipping checkpoint {path.name}: {error}; falling back to the previous one", stacklevel=2)

    def refuse(self) -> None:
        if self.broken:
            raise ck.CheckpointError(
                f"no checkpoint in {self.ckpt_root} can be resumed ({'; '.join(self.broken[:2])}); nothing was "
                "changed. Rerun with --restart to start over at step 0 (the old checkpoints are kept)")
