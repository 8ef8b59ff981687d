"""`epg demo`: the whole method on Fashion-MNIST on a CPU — pre-train, fine-tune, sample, FID — in one command."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from epg.engine.checkpoint import load_network
from epg.engine.runlog import class_rows, save_image_grid
from epg.engine.trainer import Trainer
from epg.evaluation import eval_reference
from epg.generate import generate
from epg.metrics.knn import knn_report
from epg.plot import plot_run
from epg.presets import get_preset

# (pretrain steps, finetune steps, FID samples); the full one took 43.4 min alone on 2 cores on a day the machine ran
# 1.6–1.8× slower than when the 2 000 × 64 fine-tuning took 22.5 (README, "CPU presets"); quick ~4 min.
BUDGETS = {"full": (1000, 4000, 1000), "quick": (30, 120, 100)}


def run_demo(run_dir: str | Path, quick: bool = False, preset: str = "fmnist-tiny") -> dict:
    """Run the demo into `run_dir` (rerunning resumes) and return the summary written to summary.json."""
    run_dir = Path(run_dir)
    pre_steps, ft_steps, n_fid = BUDGETS["quick" if quick else "full"]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pre = get_preset(preset, "pretrain", {"train.steps": pre_steps, "train.ckpt_every": max(pre_steps // 2, 1),
                                          "train.knn_every": 0, "train.log_every": max(pre_steps // 20, 1)})
    print(f"epg demo: 1/4 pre-training the encoder ({pre_steps} steps of {pre.train.global_batch} images)")
    pre_result = Trainer(pre, run_dir / "pretrain").fit()
    timings["pretrain_s"] = time.perf_counter() - t0
    encoder, _, _ = load_network(pre_result.checkpoint)
    probe = knn_report(encoder, pre, n_train=2000 if quick else 5000, n_test=500 if quick else 1000)
    knn, knn_pixels = probe["knn_acc"], probe["knn_pixels"]
    print(f"epg demo: k-NN accuracy of the pre-trained encoder (LN(CLS) at σ_min): {knn:.3f} "
          f"(raw pixels, same probe: {knn_pixels:.3f})")

    t1 = time.perf_counter()
    ft = get_preset(preset, "diffusion", {"train.steps": ft_steps, "train.init_from": str(pre_result.checkpoint),
                                          "train.ckpt_every": max(ft_steps // 3, 1),
                                          "train.log_every": max(ft_steps // 30, 1),
                                          "train.sample_every": ft_steps // 2 if not quick else 0})
    print(f"epg demo: 2/4 fine-tuning encoder + decoder as a diffusion model ({ft_steps} steps of "
          f"{ft.train.global_batch} images)")
    from epg.evaluation import default_hooks

    ft_result = Trainer(ft, run_dir / "diffusion").fit(default_hooks(ft))
    timings["finetune_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    print(f"epg demo: 3/4 sampling {n_fid} images (Heun, {ft.sample.steps} steps, EMA weights)")
    net, cfg, _ = load_network(ft_result.checkpoint)
    images, labels, nfe = generate(net, cfg, range(n_fid), n_fid, seed=0, batch_size=250)
    np.savez(run_dir / "samples.npz", arr_0=images.permute(0, 2, 3, 1).numpy(), arr_1=labels.numpy())
    order = class_rows(labels, 10) if labels is not None else torch.arange(100)  # row = class
    grid = save_image_grid(images[order], run_dir / "samples.png", cols=10, scale=3)
    timings["sample_s"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    print(f"epg demo: 4/4 FID of {n_fid} samples against the Fashion-MNIST test split")
    from epg.metrics import fid_against

    fid = fid_against(images, eval_reference(cfg), num_ref=n_fid)
    timings["fid_s"] = time.perf_counter() - t3
    curves = [str(plot_run(run_dir / "pretrain")), str(plot_run(run_dir / "diffusion"))]
    summary = {"preset": preset, "quick": quick, "pretrain_steps": pre_steps, "finetune_steps": ft_steps,
               "knn_accuracy": knn, "knn_pixels": knn_pixels, "fid": fid, "fid_samples": n_fid,
               "fid_reference": eval_reference(cfg),
               "nfe": nfe, "grid": str(grid), "curves": curves, "samples": str(run_dir / "samples.npz"),
               "seconds": {k: round(v, 1) for k, v in timings.items()},
               "total_s": round(time.perf_counter() - t0, 1)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"epg demo: FID {fid:.2f} ({n_fid} samples), k-NN {knn:.3f} (raw pixels {knn_pixels:.3f}), "
          f"{summary['total_s']:.0f} s in all\n"
          f"  samples grid: {grid}\n  curves:       {', '.join(curves)}\n  summary:      {run_dir / 'summary.json'}")
    return summary


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="pre-train + fine-tune + sample + FID on Fashion-MNIST (CPU)")
    p.add_argument("--quick", action="store_true", help="a ~3-minute first look instead of ~22 minutes")
    p.add_argument("--run-dir", default=None, help="default: runs/demo (runs/demo-quick with --quick)")
    p.add_argument("--preset", default="fmnist-tiny")
    p.set_defaults(func=lambda a: run_demo(a.run_dir or ("runs/demo-quick" if a.quick else "runs/demo"),
                                           a.quick, a.preset) and 0)
    return p
