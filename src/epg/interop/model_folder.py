"""A shareable model folder in the Hugging Face layout: `model.safetensors`, a small `config.json`, a model card.

`config.json` holds what is needed to rebuild and sample the network — the architecture (`model`), the noise
parameterisation and pixel normalisation (`noise`), the stage and the sampler defaults (`sample`, so that
sampling the folder gives the images the run gives) — and none of the training settings. Loading goes through
the same reader as a checkpoint (`epg.engine.checkpoint.load_network`), so `epg sample`, `epg evaluate` and
`epg.load` take the folder as they take a run directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from epg.atomic import atomic_path
from epg.config import Config, all_keys
from epg.engine import checkpoint as ck
from epg.presets import PRESETS, get_preset
from epg.stages import stage_of

FORMAT = "epg-model-v1"
_KEPT = ("preset", "stage", "model", "noise", "sample")


def folder_config(cfg: Config) -> dict[str, Any]:
    """The architecture, normalisation and sampler part of a run config."""
    full = cfg.to_dict()
    return {"_format": FORMAT, **{k: full[k] for k in _KEPT}}


def reproduce_command(cfg: Config) -> str:
    """The `epg` command that trains this config: the preset plus every key that differs from it."""
    head = stage_of(cfg).command
    if cfg.preset not in PRESETS:
        return f"{head} (custom config: see the run's config.json)"
    base, ours = all_keys(get_preset(cfg.preset, cfg.stage)), all_keys(cfg)
    args = [f"--preset {cfg.preset}"]
    for key, value in ours.items():
        if key in ("preset", "stage") or base.get(key) == value:
            continue
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        args.append(f"--{key} {value}")
    return f"{head} " + " ".join(args)


def _last_fid(run_dir: Path) -> dict[str, Any] | None:
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    found = None
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("fid") is not None:
            found = entry
    return found


def model_card(cfg: Config, ckpt: Path, run_dir: Path, params: int, evaluation: dict[str, Any] | None) -> str:
    """README.md: what the model is, how it was measured, and the commands that reproduce and use it."""
    meta = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").is_file() else {}
    step = meta.get("step", "?")
    if evaluation is not None:
        measured = (f"FID **{evaluation['fid']:.2f}** on {evaluation['num_samples']} samples against "
                    f"{evaluation.get('num_ref', '?')} images of `{Path(str(evaluation['ref'])).name}` "
                    "(`epg evaluate`, TF-Inception FID network)")
    elif (entry := _last_fid(run_dir)) is not None:
        measured = (f"FID **{entry['fid']:.2f}** at step {entry['step']} (in-training FID on "
                    f"{cfg.train.fid_num} samples against as many reference images)")
    else:
        measured = "not measured — see the commands below"
    data = {"fmnist": "Fashion-MNIST (train split, padded to 32×32)"}.get(cfg.data.source, f"`{cfg.data.source}`")
    kind = stage_of(cfg).what
    dataset_tag = "datasets:\n- fashion_mnist\n" if cfg.data.source == "fmnist" else ""
    return f"""---
library_name: epg
tags:
- image-generation
- pixel-space
- epg
{dataset_tag}---
# {cfg.preset} — {kind}

An EPG model ("There is No VAE: End-to-End Pixel-Space Generative Modeling via Self-Supervised Pre-training",
arXiv 2510.12586) trained with epg.

| preset | stage | parameters | data | steps | images seen | resolution | classes | normalisation |
|---|---|---|---|---|---|---|---|---|
| `{cfg.preset}` | {cfg.stage} | {params:,} | {data} | {step} | {meta.get('images', '?')} | \
{cfg.model.img_size}×{cfg.model.img_size}×{cfg.model.channels} | {cfg.model.num_classes} | {cfg.noise.normalization} |

Measured: {measured}.

`model.safetensors` holds the {'EMA ' if (ckpt / 'ema.safetensors').is_file() else ''}weights; `config.json` the
architecture, noise parameterisation, pixel normalisation and sampler defaults.

## Use
```bash
epg sample --checkpoint . --num-images 1000 --out samples.npz
```
```python
import epg
pipe = epg.load(".")
images = pipe.sample(labels=[0, 1, 2], seed=0)   # uint8, N×H×W×C
```

## Reproduce
```bash
{reproduce_command(cfg)}
epg sample --checkpoint RUN --num-images 1000 --out samples.npz
epg evaluate samples.npz --ref {'fmnist-test' if cfg.data.source == 'fmnist' else 'REFERENCE'}
```
"""


def export_model_folder(run: Path, out: Path, evaluation: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` (EMA weights where there are any), `config.json` and `README.md`, atomically."""
    ckpt = ck.resolve_checkpoint(run)
    ck.verify_checkpoint(ckpt)
    cfg = ck.read_config(ckpt)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ck.CheckpointError(f"{out} exists and is not empty; choose a new folder")
    weights = ck.read_tensors(ckpt, "ema" if (ckpt / "ema.safetensors").is_file() else "model")
    params = sum(v.numel() for k, v in weights.items() if "running_" not in k and "num_batches" not in k)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(folder_config(cfg), indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(model_card(cfg, ckpt, run_dir, params, evaluation))
    return out
