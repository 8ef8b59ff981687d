"""Checkpoints: safetensors + JSON, written atomically, verified on load, never unpickled.

A checkpoint is a directory ``step-00001000/`` holding ``config.json`` (the full run config),
``model.safetensors`` (the trained network), optionally ``ema.safetensors`` (the EMA used for sampling)
and, for training checkpoints, ``state.safetensors`` + ``state.json`` (optimizer, teacher, step, …).
``manifest.json`` is written last and lists every file's size and SHA-256: a checkpoint without it, or
whose files disagree with it, is incomplete or corrupt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from epg.atomic import atomic_path, describe_os_error
from epg.config import Config, ConfigError, config_from_dict, identity_diffs
from epg.stages import build_network, stage_of

STEP_DIR = re.compile(r"^step-(\d{8,})$")
FORMAT = "epg-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, incomplete, corrupt, or of another model."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB chunks (the manifest's checksum)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def first_non_finite(tensors: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """The name (``group/key``) of the first floating-point tensor holding a NaN or Inf, else None."""
    for group, entries in tensors.items():
        for key, t in entries.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"{group}/{key}"
    return None


def write_checkpoint(final_dir: Path, cfg: Config, tensors: dict[str, dict[str, torch.Tensor]],
                     state: dict[str, Any] | None = None) -> Path:
    """Write ``{name}.safetensors`` for each entry of `tensors` (+ state.json) into `final_dir`, atomically.

    A checkpoint never holds a non-finite tensor, and a failed write (a full disk) leaves no temporary behind.
    """
    final_dir = Path(final_dir)
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"refusing to write {final_dir.name}: {bad} is not finite")
    try:
        with atomic_path(final_dir) as tmp:
            tmp.mkdir(parents=True)
            _write_json(tmp / "config.json", cfg.to_dict())
            for name, group in tensors.items():
                _write_tensors(tmp / f"{name}.safetensors", group)
            if state is not None:
                _write_json(tmp / "state.json", state)
            files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(tmp.iterdir())}
            _write_json(tmp / "manifest.json", {"format": FORMAT, "files": files})
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"could not write checkpoint {final_dir.name} in {final_dir.parent}: "
                              f"{describe_os_error(e)}; nothing was left half-written") from None
    return final_dir


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Check the manifest against the files; raise CheckpointError naming what is wrong."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: no such checkpoint directory")
    manifest_path = ckpt / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{ckpt}: no manifest.json — an incomplete write or not an epg checkpoint")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{manifest_path}: unreadable manifest (truncated?)") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt}: format {manifest.get('format')!r} is not {FORMAT}")
    for name, meta in manifest["files"].items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (the checkpoint is incomplete)")
        if path.stat().st_size != meta["size"] or file_sha256(path) != meta["sha256"]:
            raise CheckpointError(f"{path}: size or checksum differs from the manifest (truncated or corrupt)")
    return manifest


def _read_json(path: Path, if_missing: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing — {if_missing}") from None
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: not valid JSON (truncated?)") from None


def read_config(ckpt: Path) -> Config:
    """The full config saved with a checkpoint."""
    data = _read_json(Path(ckpt) / "config.json", f"is {ckpt} an epg checkpoint directory?")
    # "_"-keys are metadata of an exported model folder (its format name), not config fields.
    return config_from_dict({k: v for k, v in data.items() if not k.startswith("_")})


def read_state_meta(ckpt: Path) -> dict[str, Any]:
    """The training state's JSON part (step, optimizer groups, …) of a checkpoint."""
    return _read_json(Path(ckpt) / "state.json", "a weights-only checkpoint cannot be resumed")


def read_tensors(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    """Load ``{name}.safetensors`` from a checkpoint directory onto the CPU; refuse non-finite weights."""
    path = Path(ckpt) / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    bad = first_non_finite({name: tensors})
    if bad is not None:
        raise CheckpointError(f"{path}: {bad.split('/', 1)[1]} holds NaN/Inf (written by a diverged run)")
    return tensors


def check_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Refuse (and name) missing, unexpected or wrongly shaped tensors before anything is loaded."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch in " + "; ".join(shapes[:6]) + (" …" if len(shapes) > 6 else ""))
        if missing:
            parts.append(f"missing {missing[:6]}" + (" …" if len(missing) > 6 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[:6]}" + (" …" if len(unexpected) > 6 else ""))
        raise CheckpointError(f"{what} does not fit this model: " + ", ".join(parts)
                              + " — is it a checkpoint of another preset or stage?")


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load a state dict into an unsharded module after `check_state`."""
    check_state(module, state, what)
    module.load_state_dict(state, strict=True)


def checkpoint_step(path: Path) -> int:
    """The step of a ``step-XXXXXXXX`` checkpoint directory."""
    m = STEP_DIR.match(Path(path).name)
    if m is None:
        raise CheckpointError(f"{path}: not a step-XXXXXXXX checkpoint directory")
    return int(m.group(1))


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint directory under `ckpt_root`, newest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


class ForeignCheckpointError(CheckpointError):
    """A sound checkpoint of another model (stage, network or noise settings)."""


def check_usable(path: Path, cfg: Config | None = None) -> None:
    """Raise CheckpointError unless `path` is complete and intact (and, given `cfg`, of its model).

    The one place that decides what a good checkpoint is; `read_tensors` adds the NaN/Inf check on load.
    """
    verify_checkpoint(path)
    if cfg is not None:
        try:
            diffs = identity_diffs(read_config(path), cfg)
        except ConfigError as e:
            raise CheckpointError(f"{path}/config.json: {e}") from None
        if diffs:
            raise ForeignCheckpointError(f"{path} was written for another model ({'; '.join(diffs[:4])})")


def newest_valid_checkpoint(ckpt_root: Path, cfg: Config | None = None) -> Path | None:
    """The newest good checkpoint (for `cfg`, when given); warn about (and skip) broken or foreign newer ones."""
    for _, path in list_checkpoints(ckpt_root):
        try:
            check_usable(path, cfg)
            return path
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint {path.name}: {e}; falling back to the previous one", stacklevel=2)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (→ its newest valid checkpoint)."""
    path = Path(path)
    if (path / "manifest.json").is_file() or (path / "config.json").is_file() and not (path / "checkpoints").is_dir():
        return path
    found = newest_valid_checkpoint(path / "checkpoints")
    if found is None:
        raise CheckpointError(f"{path}: neither a checkpoint directory nor a run directory with checkpoints")
    return found


def prune_checkpoints(ckpt_root: Path, keep_last: int, keep_every: int, cfg: Config, newest: Path) -> None:
    """Keep the newest `keep_last` checkpoints of `cfg`'s model plus every `keep_every`-th step.

    `newest` (the one just written) is always kept, and checkpoints of another model are never touched.
    """
    own = [(step, path) for step, path in list_checkpoints(ckpt_root) if path == newest or _same_model(path, cfg)]
    for i, (step, path) in enumerate(own):
        if path == newest or i < keep_last or (keep_every and step % keep_every == 0):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _same_model(path: Path, cfg: Config) -> bool:
    try:
        return not identity_diffs(read_config(path), cfg)
    except (CheckpointError, ConfigError):
        return True  # broken checkpoints of this run are pruned like good ones


def load_pretrained_encoder(target: nn.Module, path: str | Path) -> list[str]:
    """Copy a stage-1 checkpoint's encoder into `target.encoder`, dropping the projector; returns the keys used."""
    ckpt = resolve_checkpoint(path)
    verify_checkpoint(ckpt)
    saved = read_config(ckpt)
    if stage_of(saved).generates:
        raise CheckpointError(f"{ckpt} is a {saved.stage} checkpoint; train.init_from needs a stage-1 (pretrain) one")
    state = read_tensors(ckpt, "model")
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    load_state_strict(target.encoder, encoder_state, f"the encoder of {ckpt}")
    return sorted(encoder_state)


def load_network(path: str | Path, prefer_ema: bool = True, device: str | torch.device = "cpu",
                 ) -> tuple[nn.Module, Config, Path]:
    """Build the network a checkpoint holds from its config.json + safetensors pair alone."""
    ckpt = resolve_checkpoint(path)
    if (ckpt / "manifest.json").exists():
        verify_checkpoint(ckpt)
    cfg = read_config(ckpt)
    net = build_network(cfg)
    name = "ema" if prefer_ema and (ckpt / "ema.safetensors").is_file() else "model"
    load_state_strict(net, read_tensors(ckpt, name), f"{ckpt}/{name}.safetensors")
    return net.to(device).eval(), cfg, ckpt
