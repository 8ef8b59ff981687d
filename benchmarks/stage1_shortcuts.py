"""Which cues does a stage-1 encoder use to tell instances apart? (issue #15: "look for the shortcut").

For each checkpoint: the contrastive task of training (two augmented views of 256 training images at σ_min,
projector outputs, τ = 0.2), scored as InfoNCE per direction and instance top-1 (the positive is the nearest
key), under changed views. A cue the encoder relies on shows as a jump in loss when the views stop sharing it:

- `train views`: as in training (same ε for both views);
- `independent ε`: each view its own noise — the shared ε at σ_min would be an instance fingerprint;
- `+ grey jitter`: brightness/contrast ±40 % on both views — the grey-level histogram as a cue;
- `identical views`: both views the same crop — the floor of the loss.

And the consistency task: LN(CLS) of x0 + σ_n'ε against x0 + σ_{n+1}'ε (adjacent points of the curriculum's first
21-point grid, τ = 0.1), with the key's image replaced by another image of the batch but the *same* ε. If the
loss stays as low, the encoder matches the pair by its noise, not by its image.

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
from epg.noise import karras_sigmas
from epg.objectives.augment import augment_view
from epg.objectives.pretrain import PretrainObjective, info_nce
from epg.pixels import normalize
from epg.rng import SampleRNG


def score(obj: PretrainObjective, v1: torch.Tensor, v2: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor) -> dict:
    t0 = torch.full((v1.shape[0],), obj.cfg.noise.sigma_min * obj.cfg.sigma_shift)
    s = t0.view(-1, 1, 1, 1)
    with torch.no_grad():
        q = obj._encode(obj.net, v1 + s * e1, t0, True)
        k = obj._encode(obj.net, v2 + s * e2, t0, True)
    top1 = ((q @ k.T).argmax(1) == torch.arange(len(q))).float().mean()
    return {"info_nce": round(info_nce(q, k, obj.cfg.pretrain.tau_c).mean().item(), 3),
            "instance_top1": round(top1.item(), 3)}


def consistency_cue(obj: PretrainObjective, x0: torch.Tensor, eps: torch.Tensor, target: float) -> dict:
    cfg = obj.cfg
    grid = karras_sigmas(21, cfg.noise.sigma_min, cfg.noise.sigma_max, cfg.noise.rho)
    i = int((grid - target).abs().argmin().clamp(max=19))
    out = {"sigma_n": round(float(grid[i]), 3), "sigma_n1": round(float(grid[i + 1]), 3)}
    other = x0.roll(1, 0)  # every key gets its neighbour's image, with the query's ε
    for name, key_images in (("same image", x0), ("other image, same ε", other)):
        t = [torch.full((len(x0),), float(g) * cfg.sigma_shift) for g in (grid[i], grid[i + 1])]
        with torch.no_grad():
            q = obj._encode(obj.net, x0 + t[0].view(-1, 1, 1, 1) * eps, t[0], False)
            k = obj._encode(obj.net, key_images + t[1].view(-1, 1, 1, 1) * eps, t[1], False)
        out[name] = round(info_nce(q, k, 0.1).mean().item(), 3)
    return out


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
            "+ grey jitter": score(obj, *jittered, e1, e1), "identical views": score(obj, views[0], views[0], e1, e1),
            "consistency": [consistency_cue(obj, normalize(images, cfg.noise.normalization), e1, t)
                            for t in (0.5, 2.0, 10.0)]}


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
    lines += ["", "## The consistency task: InfoNCE of LN(CLS) pairs, key image = query image vs another image "
              "(same ε)", "", "| run | σ_n → σ_n+1 | same image | other image, same ε |", "|---|---|---|---|"]
    for r in rows:
        for c in r["consistency"]:
            lines.append(f"| {r['run']} | {c['sigma_n']} → {c['sigma_n1']} | {c['same image']:.3f} | "
                         f"{c['other image, same ε']:.3f} |")
    lines += ["", "Chance InfoNCE is ln 256 = 5.55. Rerun: `python benchmarks/stage1_shortcuts.py RUN_DIR …`."]
    table = "\n".join(lines) + "\n"
    (a.results / "stage1_shortcuts.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
