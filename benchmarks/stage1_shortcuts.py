"""Which cues does a stage-1 encoder use to tell instances apart? (issue #15: "look for the shortcut").

For each checkpoint: the contrastive task of training (two augmented views of 256 training images at σ_min,
projector outputs, τ = 0.2), scored as InfoNCE per direction and instance top-1 (the positive is the nearest
key), under changed views. A cue the encoder relies on shows as a jump in loss when the views stop sharing it:

- `train views`: as in training (same ε for both views);
- `independent ε`: each view its own noise — the shared ε at σ_min would be an instance fingerprint;
- `+ grey jitter`: brightness/contrast ±40 % on both views — the grey-level histogram as a cue;
- `identical views`: both views the same crop — the floor of the loss.

    python benchmarks/stage1_shortcuts.py runs/stage1_recipe/steps200/preset runs/stage1_recipe/steps200/grey-jitter
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import torch

from epg.data import open_dataset
from epg.engine.checkpoint import load_network
from epg.engine.rng import SampleRNG
from epg.objectives.augment import augment_view
from epg.objectives.pretrain import PretrainObjective, info_nce
from epg.pixels import normalize


def score(obj: PretrainObjective, v1: torch.Tensor, v2: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor) -> dict:
    t0 = torch.full((v1.shape[0],), obj.cfg.noise.sigma_min * obj.cfg.sigma_shift)
    s = t0.view(-1, 1, 1, 1)
    with torch.no_grad():
        q = obj._encode(obj.net, v1 + s * e1, t0, True)
        k = obj._encode(obj.net, v2 + s * e2, t0, True)
    top1 = ((q @ k.T).argmax(1) == torch.arange(len(q))).float().mean()
    return {"info_nce": round(info_nce(q, k, obj.cfg.pretrain.tau_c).mean().item(), 3),
            "instance_top1": round(top1.item(), 3)}


def probe(run_dir: Path, n: int = 256) -> dict:
    ckpt = sorted((run_dir / "checkpoints").iterdir())[-1]
    net, cfg, _ = load_network(ckpt)
    obj = PretrainObjective(cfg, net)
    net.train()  # the projector's BN on batch statistics, as in training
    ds = open_dataset(cfg.data.source, cfg.data.split, resolution=cfg.model.img_size)
    images = torch.stack([ds[i][0] for i in torch.linspace(0, len(ds) - 1, n).long().tolist()])
    rng = SampleRNG(123, 0, torch.arange(n))
    views = [normalize(augment_view(images, rng, v) * 255.0, cfg.noise.normalization) for v in obj.views]
    jit = [replace(v, grey_jitter_p=1.0, grey_strength=0.4) for v in obj.views]
    jittered = [normalize(augment_view(images, rng, v) * 255.0, cfg.noise.normalization) for v in jit]
    e1 = torch.randn(views[0].shape, generator=torch.Generator().manual_seed(1))
    e2 = torch.randn(views[0].shape, generator=torch.Generator().manual_seed(2))
    return {"run": os.path.relpath(run_dir), "step": int(ckpt.name.split("-")[-1]),
            "train views": score(obj, *views, e1, e1), "independent ε": score(obj, *views, e1, e2),
            "+ grey jitter": score(obj, *jittered, e1, e1), "identical views": score(obj, views[0], views[0], e1, e1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--results", type=Path, default=Path(os.path.relpath(Path(__file__).parent / "results")))
    a = p.parse_args()
    torch.manual_seed(0)
    rows = [probe(r) for r in a.runs]
    (a.results / "stage1_shortcuts.json").write_text(json.dumps(rows, indent=2))
    cases = ("train views", "independent ε", "+ grey jitter", "identical views")
    lines = ["# Cues of the stage-1 contrastive task (InfoNCE per direction / instance top-1 of 256, τ = 0.2)", "",
             "| run | step | " + " | ".join(cases) + " |", "|---|---|" + "---|" * len(cases)]
    for r in rows:
        cells = " | ".join(f"{r[c]['info_nce']:.3f} / {r[c]['instance_top1']:.3f}" for c in cases)
        lines.append(f"| {r['run']} | {r['step']} | {cells} |")
    lines += ["", "Chance InfoNCE is ln 256 = 5.55. Rerun: `python benchmarks/stage1_shortcuts.py RUN_DIR …`."]
    table = "\n".join(lines) + "\n"
    (a.results / "stage1_shortcuts.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
