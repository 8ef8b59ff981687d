"""Does bf16 sampling move FID? The same model, seeds and labels sampled in fp32 and in bf16 autocast.

Trains an `fmnist-tiny` diffusion model from scratch for `--steps` (or takes `--checkpoint`), draws `--num`
samples with the preset's 75-NFE Heun sampler in each precision (same seed, so the same initial noise and labels),
and reports the wall time of each, the pixel difference between the two sets and the FID of each against the
Fashion-MNIST test split (`--num` reference images).

    python benchmarks/sampling_precision.py --steps 1000 --num 1000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from epg.engine.checkpoint import load_network
from epg.engine.trainer import Trainer
from epg.evaluation import eval_reference
from epg.generate import generate
from epg.metrics import fid_against
from epg.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a diffusion run or checkpoint (default: train one)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "sampling_precision")
    p.add_argument("--out", type=Path, default=RESULTS / "sampling_precision")
    args = p.parse_args()
    load_before = os.getloadavg()
    source = args.checkpoint
    if source is None:
        cfg = get_preset("fmnist-tiny", "diffusion", {"train.steps": args.steps, "train.ckpt_every": args.steps})
        source = Trainer(cfg, args.run_dir).fit().checkpoint
    net, cfg, ckpt = load_network(source)
    images, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        images[precision], labels, nfe = generate(net, cfg, range(args.num), args.num, seed=0, batch_size=250,
                                                  precision=precision, progress=True)
        seconds[precision] = time.perf_counter() - t0
    diff = (images["fp32"].int() - images["bf16"].int()).abs().float()
    ref = eval_reference(cfg)
    fid = {k: fid_against(v, ref, num_ref=args.num) for k, v in images.items()}
    report = {"checkpoint": os.path.relpath(ckpt, ROOT), "num": args.num, "nfe": nfe, "reference": ref,
              "seconds": seconds, "fid": fid, "mean_abs_pixel_diff": diff.mean().item(),
              "max_abs_pixel_diff": diff.max().item(), "share_of_pixels_equal": (diff == 0).float().mean().item(),
              "threads": torch.get_num_threads(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    text = (f"# Sampling in fp32 vs bf16 ({args.num} samples, {nfe} NFE, same seeds; {report['checkpoint']})\n\n"
            "| precision | wall s | FID vs test split |\n|---|---|---|\n"
            + "".join(f"| {k} | {seconds[k]:.0f} | {fid[k]:.2f} |\n" for k in ("fp32", "bf16"))
            + f"\nbf16 / fp32 time: {seconds['bf16'] / seconds['fp32']:.2f}; FID difference "
            f"{fid['bf16'] - fid['fp32']:+.2f}; pixels: mean |Δ| {report['mean_abs_pixel_diff']:.2f} / 255, max "
            f"{report['max_abs_pixel_diff']:.0f}, {100 * report['share_of_pixels_equal']:.1f} % identical. "
            f"{report['threads']} thread(s), load average {load_before[0]:.2f} before, "
            f"{report['loadavg_after'][0]:.2f} after.\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
