"""Which diffusion loss weighting learns at CPU scale? (Why the CPU presets use plain x0 MSE, issue #5.)

Trains `fmnist-tiny` diffusion from a random encoder with each weighting for the same steps, then reports x̂0's
MSE against x0 at several noise levels (EMA weights, 256 test images, fixed noise) and writes a 10×10 Heun
sample grid per weighting (row = class, CFG 2.5, 18 steps). The paper's grid weight λ = 1/(σ_i − σ_{i+1}) spans
≈ 1e4 between σ_min and σ_max (EDM's 1/σ²-like weight likewise), so at batch 64 each step's gradient comes from
its one or two lowest-σ samples; the best constant predictor at high noise (the class mean) scores ≈ 0.16.

    python benchmarks/weighting.py [--steps 800] [--weightings grid edm uniform]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from sigma_sensitivity import denoising_mse  # benchmarks/ is on sys.path when run as a script

from epg.engine.checkpoint import load_network
from epg.engine.runlog import save_image_grid
from epg.engine.trainer import Trainer
from epg.generate import generate
from epg.presets import get_preset

SIGMAS = (0.01, 0.1, 0.5, 2.0, 10.0, 80.0)  # unshifted


def run(weighting: str, steps: int, work: Path, results: Path) -> dict:
    cfg = get_preset("fmnist-tiny", "diffusion", {"diffusion.weighting": weighting, "train.steps": steps,
                                                  "train.ckpt_every": steps, "train.log_every": 25})
    t0 = time.perf_counter()
    ckpt = Trainer(cfg, work / weighting).fit().checkpoint
    seconds = time.perf_counter() - t0
    net, cfg, _ = load_network(ckpt)
    cfg.sample.steps = 18
    images, _, nfe = generate(net, cfg, range(100), 100, seed=0, labels=torch.arange(10).repeat_interleave(10))
    grid = results / f"weighting_{weighting}.png"
    save_image_grid(images, grid, cols=10, scale=3)
    mses = denoising_mse(net, cfg, SIGMAS, n=256, seed=5)
    return {"weighting": weighting, "steps": steps, "train_seconds": round(seconds, 1),
            "x0_mse_by_sigma": {str(s): round(m, 4) for s, m in zip(SIGMAS, mses)}, "grid": grid.name, "nfe": nfe}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--weightings", nargs="*", default=["grid", "edm", "uniform"])
    p.add_argument("--work", type=Path, default=Path("runs/weighting"))
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    a = p.parse_args()
    a.results.mkdir(parents=True, exist_ok=True)
    rows = [run(w, a.steps, a.work, a.results) for w in a.weightings]
    head = "| weighting | steps | train s | " + " | ".join(f"x̂0 MSE σ={s}" for s in SIGMAS) + " | grid |"
    lines = ["# Diffusion loss weighting at CPU scale (fmnist-tiny, random encoder, EMA weights)", "", head,
             "|" + "---|" * (len(SIGMAS) + 4)]
    for r in rows:
        mses = " | ".join(f"{r['x0_mse_by_sigma'][str(s)]:.4f}" for s in SIGMAS)
        lines.append(f"| {r['weighting']} | {r['steps']} | {r['train_seconds']:.0f} | {mses} | {r['grid']} |")
    table = "\n".join(lines) + "\n"
    (a.results / "weighting.md").write_text(table)
    (a.results / "weighting.json").write_text(json.dumps(rows, indent=2))
    print(table)


if __name__ == "__main__":
    main()
