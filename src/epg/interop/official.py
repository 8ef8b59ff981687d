"""The authors' checkpoint layout (the released "jiachenlei/EPG" weights): key names, files, safe reading.

A generator folder holds `nnet.pth` (online weights) and `nnet_ema.pth` (EMA); a stage-1 folder holds
`nnet.pth` and `target_model.pth` (the EMA teacher). Each file is a plain `state_dict` saved with `torch.save`.
Files are read with `torch.load(weights_only=True)` only, so a pickle holding anything but tensors and
containers is refused before any of its code could run.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from epg.engine.checkpoint import CheckpointError

# (authors' name, our name); {i} is a block index, {r} the rest of the key. Order matters: first match wins.
_RULES: tuple[tuple[str, str], ...] = (
    ("cls_token", "encoder.cls_token"),
    ("pos_embed", "encoder.pos_embed"),
    ("patch_embed.proj.{r}", "encoder.patch_embed.{r}"),
    ("blocks.{i}.{r}", "encoder.blocks.{i}.{r}"),
    ("norm.{r}", "encoder.norm.{r}"),
    ("projection_head.{r}", "projector.net.{r}"),
    ("decoder_blocks.{i}.skip_linear.{r}", "skips.{i}.linear.{r}"),
    ("decoder_blocks.{i}.skip_norm.{r}", "skips.{i}.norm.{r}"),
    ("decoder_blocks.{i}.adaLN_modulation.{r}", "blocks.{i}.ada.{r}"),
    ("decoder_blocks.{i}.{r}", "blocks.{i}.{r}"),
    ("encoder_to_decoder.{r}", "enc_to_dec.{r}"),
    ("out_norm.{r}", "head_norm.{r}"),
    ("out.{r}", "head.{r}"),
    ("class_embed.{r}", "class_embed.{r}"),
)
# Wrappers that training code sometimes leaves on every key (DDP, torch.compile).
_PREFIXES = ("module.", "_orig_mod.")
GENERATOR_FILES = ("nnet.pth", "nnet_ema.pth")


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)").replace(re.escape("{r}"), r"(?P<r>.+)")
    return re.compile(f"^{pattern}$")


_TO_OURS = [(_compile(a), b) for a, b in _RULES]
_TO_OFFICIAL = [(_compile(b), a) for a, b in _RULES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict())
    return None


def to_official_name(key: str) -> str:
    """Our state-dict key → the authors' (raises KeyError for a key their networks do not have)."""
    name = _rename(key, _TO_OFFICIAL)
    if name is None:
        raise KeyError(key)
    return name


def to_our_name(key: str) -> str | None:
    """The authors' state-dict key → ours, or None for a key no rule knows."""
    return _rename(key, _TO_OURS)


def to_official(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Rename a whole state dict of ours into the authors' layout."""
    return OrderedDict((to_official_name(k), v) for k, v in state.items())


def read_pth(path: Path) -> OrderedDict[str, torch.Tensor]:
    """A `.pth` state dict read with `weights_only=True`; refuse anything that is not a flat dict of tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    archive = zipfile.is_zipfile(path)  # torch.save's format; the legacy one is read too, when it parses
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not archive:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (neither torch.save's zip "
                                  "archive nor its legacy format)") from None
        lines = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        raise CheckpointError(f"{path}: refused — it holds objects other than tensors, and epg never unpickles "
                              f"code ({(lines or [type(e).__name__])[0][:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e).strip()[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} entries are not tensors (e.g. {bad[0]!r}); "
                              "expected a plain state dict as the authors' code saves it")
    state = OrderedDict(obj)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = OrderedDict((k[len(prefix):], v) for k, v in state.items())
    return state


def kind_of(state: dict[str, torch.Tensor]) -> str:
    """'generator' (has decoder blocks) or 'stage1' (has a projection head), from the authors' keys."""
    if any(k.startswith("decoder_blocks.") for k in state):
        return "generator"
    if any(k.startswith("projection_head.") for k in state):
        return "stage1"
    raise CheckpointError("neither a generator (no decoder_blocks.*) nor a stage-1 network "
                          "(no projection_head.*) in the authors' layout")


def read_official(path: Path) -> tuple[str, dict[str, OrderedDict[str, torch.Tensor]]]:
    """(kind, {file name: state}) from a folder in the authors' layout or a bare `.pth` file."""
    path = Path(path)
    if path.is_file():
        state = read_pth(path)
        return kind_of(state), {path.name: state}
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or folder")
    present = {p.name for p in path.glob("*.pth")}
    if "nnet.pth" not in present and "nnet_ema.pth" not in present:
        raise CheckpointError(f"{path}: no nnet.pth or nnet_ema.pth — not a checkpoint folder in the authors' layout "
                              f"(found: {sorted(present) or 'no .pth files'})")
    files = {name: read_pth(path / name) for name in (*GENERATOR_FILES, "target_model.pth") if name in present}
    kinds = {name: kind_of(state) for name, state in files.items()}
    if len(set(kinds.values())) > 1:
        raise CheckpointError(f"{path}: files of different networks in one folder: {kinds}")
    return next(iter(kinds.values())), files


def fit_problems(state: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> str:
    """'' when the keys and shapes are exactly `expected`; else the missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            parts.append(f"{len(items)} {label}: " + ", ".join(items[:5]) + (", …" if len(items) > 5 else ""))
    return "; ".join(parts)


def save_pth(path: Path, state: dict[str, torch.Tensor]) -> None:
    """`torch.save` a plain state dict of CPU tensors, as the authors' code writes it."""
    torch.save(OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state.items()), path)
