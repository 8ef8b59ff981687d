"""How far can the fmnist-tiny encoder get in stage 1's budget when it is given the labels? (issue #15, item 1).

The issue's bar is a k-NN probe of LN(CLS) at σ_min ≥ 0.85 after the demo's stage 1 (1 000 steps of 64, about one
epoch). Whether any objective can reach it in that budget is a property of the architecture and the budget, not of
EPG's loss, so this benchmark measures a ceiling: the same encoder (the preset's, same init, optimiser, lr schedule,
precision, augmentations of the contrastive view 1 and σ_min input noise), trained on the same images with
cross-entropy from a linear head on LN(CLS) — supervised learning, which sees the very labels the probe scores.
A self-supervised stage 1 is not expected to beat it. Reported at `--every` steps: the project's k-NN probe
(`epg.metrics.knn.KnnProbe`, 5 000 / 1 000) with the raw-pixel baseline, the head's own test accuracy, and seconds.

    python benchmarks/stage1_ceiling.py                   # seed 0, 1 000 steps, probed every 250
    python benchmarks/stage1_ceiling.py --seeds 0 1 2     # the spread
    python benchmarks/stage1_ceiling.py --steps 4000 --every 1000   # about stage 1's seconds instead of its images
    python benchmarks/stage1_ceiling.py --arms supervised-noaug --steps 4000 --every 1000   # an encoder above 0.85
    python benchmarks/stage1_ceiling.py --report          # rebuild the table from --work

Each (arm, seed) writes `--work/<arm>-seed<N>.json` when done (`<arm>-<steps>steps-seed<N>` for other lengths), so
reruns skip it, and its final encoder as a stage-1 checkpoint `--work/<arm>-seed<N>/` that `train.init_from` reads
(run from the repository root).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from results_io import past_deadline, write_json, write_results
from torch import nn

from epg.config import Config
from epg.data import open_dataset
from epg.demo import BUDGETS
from epg.engine.checkpoint import write_checkpoint
from epg.engine.schedule import learning_rate
from epg.engine.setup import param_groups
from epg.metrics.knn import KnnProbe
from epg.nn import build_rcm, encode
from epg.nn.denoiser import autocast
from epg.noise import add_noise
from epg.objectives.augment import ViewSpec, augment_view
from epg.objectives.pretrain import contrastive_views
from epg.pixels import normalize
from epg.presets import get_preset
from epg.rng import SampleRNG

RESULTS = Path(__file__).parent / "results" / "stage1_ceiling"
DEMO_STEPS = BUDGETS["full"][0]  # the demo's stage 1
# arm → whether the training images are augmented as the contrastive view 1 (else: the flip only, as stage 2)
ARMS = {"supervised": True, "supervised-noaug": False}


def view_spec(cfg: Config, augment: bool) -> ViewSpec:
    """Stage 1's contrastive view 1, or the flip alone (full-area crop, no other op)."""
    return contrastive_views(cfg)[0] if augment else ViewSpec("view1", 0.0, 0.0, 1.0, jitter_p=0.0, gray_p=0.0)


def train(arm: str, seed: int, steps: int, every: int, probe: KnnProbe, cfg: Config, ckpt: Path) -> dict:
    torch.manual_seed(seed)
    net = build_rcm(cfg.model)
    head = nn.Linear(cfg.model.enc_width, cfg.model.num_classes)
    groups = param_groups(net, cfg) + [{"params": list(head.parameters()), "weight_decay": cfg.optim.weight_decay}]
    opt = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps)
    ds = open_dataset(cfg.data.source, cfg.data.split, resolution=cfg.model.img_size)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    spec, batch, s = view_spec(cfg, ARMS[arm]), cfg.train.global_batch, cfg.sigma_shift
    xte = normalize(probe.xte, cfg.noise.normalization)
    rows, seconds = [], 0.0
    for step in range(steps):
        t0 = time.perf_counter()
        pos = torch.arange(step * batch, (step + 1) * batch) % len(ds)
        items = [ds[int(i)] for i in order[pos]]
        images, labels = torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])
        rng = SampleRNG(seed, step, pos)
        y = normalize(augment_view(images, rng, spec) * 255.0, cfg.noise.normalization)
        t = torch.full((batch,), cfg.noise.sigma_min * s)
        y = add_noise(y, t, rng.randn("eps", *images.shape[1:]))
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg.optim, steps)
        with autocast("cpu", cfg.train.precision):
            logits = head(encode(net, y, t, cfg.noise.sigma_data))
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - t0
        if (step + 1) % every == 0 or step + 1 == steps:
            net.eval()
            with torch.no_grad(), autocast("cpu", cfg.train.precision):
                tt = torch.full((xte.shape[0],), cfg.noise.sigma_min * s)
                pred = head(encode(net, xte, tt, cfg.noise.sigma_data)).argmax(1)
            head_acc = float((pred == probe.yte).float().mean())
            row = {"step": step + 1, "epochs": round((step + 1) * batch / len(ds), 3), "knn": probe.encoder(net),
                   "head_acc": head_acc, "loss": round(float(loss.detach()), 4), "train_s": round(seconds, 1)}
            net.train()
            rows.append(row)
            print(f"stage1_ceiling: {arm} seed {seed} {row}", flush=True)
    # A stage-1 checkpoint of the encoder (the projector stays at its init), for `train.init_from`: fine-tuning from
    # a class-level encoder tells whether stage 2 can use one at all (pretrain_vs_scratch.py --variant).
    write_checkpoint(ckpt, cfg, {"model": {k: v.detach().cpu() for k, v in net.state_dict().items()}})
    return {"arm": arm, "seed": seed, "checkpoint": ckpt.as_posix(), "steps": steps, "batch": batch, "lr": cfg.optim.lr,
            "warmup_steps": cfg.optim.warmup_steps, "threads": torch.get_num_threads(), "rows": rows}


def report(work: Path, pixels: float) -> None:
    runs = sorted((json.loads(p.read_text()) for p in work.glob("*-seed*.json")),
                  key=lambda r: (r["arm"], r["steps"], r["seed"]))
    if not runs:
        raise SystemExit(f"stage1_ceiling: nothing finished in {work}")
    lines = ["# Stage-1 ceiling: the fmnist-tiny encoder trained with labels in stage 1's budget", "",
             "| arm | run steps | seed | step | epochs | k-NN LN(CLS) at σ_min | raw pixels | linear head, test "
             "| train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for row in r["rows"]:
            lines.append(f"| {r['arm']} | {r['steps']} | {r['seed']} | {row['step']} | {row['epochs']} | "
                         f"{row['knn']:.3f} | {pixels:.3f} | {row['head_acc']:.3f} | {row['train_s']} |")
    lines += ["", "Same encoder, init, AdamW, lr schedule (the fmnist-tiny stage-1 preset for a run of this length), "
              "bf16 and σ_min input noise as stage 1; `supervised` augments as the contrastive view 1 (crop from 60 %, "
              "flip, brightness/contrast jitter), `supervised-noaug` flips only. Cross-entropy from a linear head on "
              "LN(CLS). The probe's binomial std on 1 000 test images is ≈ 0.013. `train s` is on a shared 2-core "
              "machine (1 thread each, two or three jobs at once); the demo's stage 1 (1 000 steps of the EPG "
              "objective) took 1 281 s the same way, so the 4 000-step run is about its seconds and the 1 000-step "
              "runs its images (the `supervised-noaug` 4 000-step run was measured in a later session, when the "
              "same two-job load ran about twice as fast: its seconds compare with nothing above). Inside the "
              "4 000-step run, step 1 000 is a quarter into its cosine schedule, not the end of one. One seed per "
              "arm. Rerun: "
              "`python benchmarks/stage1_ceiling.py --arms supervised supervised-noaug` and "
              "`python benchmarks/stage1_ceiling.py --steps 4000 --every 1000 [--arms supervised-noaug]`. The "
              "4 000-step `supervised-noaug` encoder (k-NN above the issue's 0.85 bar) is the init of the `sup4000` "
              "fine-tuning variants in pretrain_vs_scratch.md."]
    write_results(RESULTS, "\n".join(lines), {"pixels": pixels, "runs": runs})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="*", default=["supervised"], choices=list(ARMS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help="default: the demo's stage 1")
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--work", type=Path, default=Path("runs/stage1_ceiling"))
    p.add_argument("--report", action="store_true", help="only rebuild the table")
    p.add_argument("--no-start-after", default="", help="HH:MM UTC after which no training run starts")
    args = p.parse_args()
    cfg = get_preset("fmnist-tiny", "pretrain", {"train.steps": args.steps})
    probe = KnnProbe(cfg)
    if not args.report:
        args.work.mkdir(parents=True, exist_ok=True)
        for arm in args.arms:
            for seed in args.seeds:
                name = f"{arm}-seed{seed}" if args.steps == DEMO_STEPS else f"{arm}-{args.steps}steps-seed{seed}"
                out = args.work / f"{name}.json"
                if not out.exists() and not past_deadline(args.no_start_after, f"stage1_ceiling: {name}"):
                    write_json(out, train(arm, seed, args.steps, args.every, probe, cfg, args.work / name))
    report(args.work, probe.pixels())


if __name__ == "__main__":
    main()
