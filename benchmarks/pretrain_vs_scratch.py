"""The paper's ablation at CPU scale: fine-tuning from EPG pre-trained encoders vs from a random one (issue #15).

Paper (ImageNet-256, METHOD.md §0): DM FID 41.36 with EPG pre-training vs 59.69 from scratch; CM 33.12 vs
diverged. Here: Fashion-MNIST 32×32, the `fmnist-tiny` preset. What is measured:

- **Dose–response.** One stage-1 run of `--pretrain-steps` (default: the demo's) saves the encoder at each
  `--doses` fraction of it (0 = a random encoder = scratch). Each dose gets the k-NN probe (LN(CLS) at σ_min,
  raw pixels beside it) and the same fine-tuning from it. The stage-1 run (seed 0) is shared by every seed.
- **Arms** (objective, dose, seed): the fine-tuning seed is `train.seed`. Each fine-tuning run is
  `max(--eval-steps)` steps long and evaluated at every `--eval-steps` checkpoint of that one run (so the
  1 000-step point is step 1 000 of a 2 000-step schedule); `--stop-at N` trains no further than step N in this
  invocation (rerun without it to continue the same run).
- **Per evaluation:** FID of `--fid-num` EMA samples (class-balanced labels, sample seed 0) against the test split,
  and the class accuracy of those conditional samples judged by the cached Fashion-MNIST classifier
  (benchmarks/fmnist_classifier.py; its own test accuracy is in the table).
- **Compute-matched scratch** (`--matched`): a scratch run with E extra steps, E = stage-1 seconds / the
  scratch run's fine-tuning seconds per step (rounded to 50), evaluated at each eval step + E.

- **Fine-tuning variants** (`--variant NAME --set KEY=VALUE …`): the same arms with config overrides of the
  fine-tuning (e.g. `optim.layer_decay=0.75`, or `train.init_from=` another stage-1 checkpoint, whose encoder is
  then probed too); their arms are named `<objective>-NAME-dose…` and reported in a table of their own, beside the
  default fine-tuning of the same seeds and the scratch row.

Every run lives in its own run directory under `--work` and resumes when the script is rerun; each arm's results
are one JSON file there, and `--report` rebuilds the table from whatever has finished.

    python benchmarks/pretrain_vs_scratch.py --objectives diffusion --doses 0 0.25 0.5 1 --seeds 0 --stop-at 1000
    python benchmarks/pretrain_vs_scratch.py --doses 0 1 --seeds 1 2 --stop-at 1000
    python benchmarks/pretrain_vs_scratch.py --matched --objectives diffusion --seeds 0 1 2
    python benchmarks/stage1_ceiling.py      # then fine-tune from the encoder trained with labels:
    python benchmarks/pretrain_vs_scratch.py --objectives diffusion --doses 1 --seeds 0 1 2 --stop-at 1000 \
        --variant supervised-init --set train.init_from=runs/stage1_ceiling/supervised-seed0
    python benchmarks/pretrain_vs_scratch.py --objectives diffusion --doses 1 --seeds 0 --stop-at 1000 \
        --variant ld0.75 --set optim.layer_decay=0.75
    python benchmarks/pretrain_vs_scratch.py --objectives diffusion --doses 1 0 --seeds 0 \
        --variant lr1e-3 --set optim.lr=1e-3      # then --doses 1 0 --seeds 1 2
    python benchmarks/pretrain_vs_scratch.py --objectives consistency --doses 1 --seeds 0 1 2 \
        --variant noaux --set consistency.aux_weight=0
    python benchmarks/pretrain_vs_scratch.py --objectives diffusion --doses 1 --seeds 0 --eval-steps 2000 \
        --variant lr1e-3-edm-cap40 --set optim.lr=1e-3 diffusion.weighting=edm diffusion.weight_cap=40 optim.grad_clip=0
    python benchmarks/pretrain_vs_scratch.py --objectives diffusion --doses 1 --seeds 0 1 2 --eval-steps 4000 \
        --variant lr1e-3-b32 --set optim.lr=1e-3 train.global_batch=32      # the same images in twice the steps
    python benchmarks/stage1_ceiling.py --arms supervised-noaug --steps 4000 --every 1000   # k-NN 0.864, then:
    python benchmarks/pretrain_vs_scratch.py --objectives diffusion --doses 1 --seeds 0 1 2 --variant lr1e-3-sup4000 \
        --set optim.lr=1e-3 train.init_from=runs/stage1_ceiling/supervised-noaug-4000steps-seed0
    python benchmarks/pretrain_vs_scratch.py --objectives consistency --doses 1 --seeds 0 1 2 --variant noaux-sup4000 \
        --set consistency.aux_weight=0 train.init_from=runs/stage1_ceiling/supervised-noaug-4000steps-seed0
    python benchmarks/pretrain_vs_scratch.py --report

The arms' records are also collected in results/pretrain_vs_scratch.json. On a machine without the work folder,
`--restore` first writes them back into `--work` (keeping any file already there), so that new arms are added to the
table rather than replacing it. Restored arms have no checkpoints: they are reported, and one asked for a step it
has not evaluated trains again from step 0.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import time
from functools import reduce
from pathlib import Path

import torch
from fmnist_classifier import class_accuracy, load_or_train
from pretrain_vs_scratch_report import TABLE_SETTINGS, arm_name, report, restore
from results_io import past_deadline, write_json

from epg.demo import BUDGETS
from epg.engine.checkpoint import list_checkpoints, load_network, write_checkpoint
from epg.engine.hooks import RunView
from epg.engine.runlog import class_rows, save_image_grid
from epg.engine.trainer import NonFiniteLossError, Trainer
from epg.evaluation import eval_reference
from epg.generate import generate
from epg.metrics import fid_against
from epg.metrics.knn import KnnProbe
from epg.nn import build_rcm
from epg.presets import get_preset

DEMO_PRETRAIN_STEPS = BUDGETS["full"][0]
STANDARD_DOSES = (0.25, 0.5, 0.75, 1.0)  # the stage-1 run always saves its encoder at these shares
GRIDS = "pretrain_vs_scratch"  # sub-folder of --results for the sample grids


def _newest_step(run_dir: Path) -> int:
    found = list_checkpoints(run_dir / "checkpoints")
    return found[0][0] if found else 0


# ---------------------------------------------------------------- stage 1 and its doses
def dose_steps(doses: list[float], total: int) -> dict[str, int]:
    """Dose (as written, e.g. "0.25") → stage-1 step of its encoder (0 = random encoder)."""
    return {_dose_key(d): round(d * total) for d in doses}


def _dose_key(d: float) -> str:
    return f"{d:g}"


def _save_encoder_at(steps: set[int], folder: Path):
    """A hook writing the online stage-1 network as a weights-only checkpoint at each of `steps`."""
    def hook(run: RunView, step: int) -> dict:
        if step in steps and not (folder / f"step-{step:08d}" / "manifest.json").exists():
            state = {k: v.detach().cpu() for k, v in run.online().state_dict().items()}
            write_checkpoint(folder / f"step-{step:08d}", run.cfg, {"model": state})
        return {}
    return hook


def pretrain(args: argparse.Namespace) -> dict:
    """The one stage-1 run with an encoder saved at every dose, and the k-NN probe of each (resumable)."""
    out = args.work / "pretrain.json"
    info = json.loads(out.read_text()) if out.exists() else {}
    if info and info["steps"] != args.pretrain_steps:
        raise SystemExit(f"{out} is of a {info['steps']}-step stage 1, not {args.pretrain_steps}: use another --work")
    wanted = dose_steps(sorted({0.0, *args.doses}), args.pretrain_steps)  # the scratch row is always probed
    if info and all(k in info["doses"] for k in wanted):
        return info
    cfg = get_preset(args.preset, "pretrain", {"train.steps": args.pretrain_steps, "train.knn_every": 0,
                                               "train.ckpt_every": max(args.pretrain_steps // 4, 1)})
    run_dir, enc_dir = args.work / "pretrain", args.work / "pretrain-doses"
    # Scratch alone (--doses 0) needs no stage-1 run, so it can run in a second process while the first trains it.
    if not info.get("seconds") and any(step > 0 for step in wanted.values()):
        if past_deadline(args.no_start_after, "pretrain_vs_scratch"):
            raise SystemExit(1)
        start = _newest_step(run_dir)
        t0 = time.perf_counter()
        # The encoder is saved at the standard doses too, so that a later invocation can ask for them.
        saved = {s for s in dose_steps([*args.doses, *STANDARD_DOSES], args.pretrain_steps).values() if s > 0}
        Trainer(cfg, run_dir).fit([_save_encoder_at(saved, enc_dir)])
        seconds = time.perf_counter() - t0
        if start > 0:
            print(f"pretrain_vs_scratch: stage 1 resumed at step {start}; its seconds cover only the rest")
        info = {"steps": args.pretrain_steps, "images": args.pretrain_steps * cfg.train.global_batch,
                "batch": cfg.train.global_batch, "seed": cfg.train.seed, "seconds": round(seconds, 1),
                "resumed_at": start, "s_per_step": round(seconds / max(args.pretrain_steps - start, 1), 3),
                "threads": torch.get_num_threads(), "doses": {}}
    info = info or {"steps": args.pretrain_steps, "doses": {}}
    probe = KnnProbe(cfg)
    info["knn_pixels"] = probe.pixels()
    info["knn_split"] = f"{len(probe.ytr)} train / {len(probe.yte)} test, 20-NN cosine"
    for key, step in wanted.items():
        if key in info["doses"]:
            continue
        if step == 0:
            torch.manual_seed(0)
            net, ckpt = build_rcm(cfg.model), ""
        else:
            if not (enc_dir / f"step-{step:08d}").is_dir():
                raise SystemExit(f"no stage-1 encoder was saved at step {step} (dose {key}): the stage-1 run saved "
                                 f"{sorted(p.name for p in enc_dir.glob('step-*'))}")
            net, _, path = load_network(enc_dir / f"step-{step:08d}")
            ckpt = str(path)
        info["doses"][key] = {"stage1_steps": step, "checkpoint": ckpt, "knn": probe.encoder(net),
                              "stage1_seconds": round(info.get("s_per_step", 0.0) * step, 1)}
        print(f"pretrain_vs_scratch: dose {key} (stage-1 step {step}): k-NN {info['doses'][key]['knn']:.3f} "
              f"(raw pixels {info['knn_pixels']:.3f})", flush=True)
    write_json(out, info)
    return info


# ---------------------------------------------------------------- fine-tuning arms
def _stop_at(until: int):
    """A hook that asks the Trainer to stop at step `until` (its SIGTERM path: it checkpoints that step and
    returns; a rerun resumes). The request is read at the start of the next step, hence `until − 1`."""
    def hook(run: RunView, step: int) -> dict:
        if step == until - 1:
            signal.raise_signal(signal.SIGTERM)
        return {}
    return hook


def _train(args: argparse.Namespace, info: dict, cfg, run_dir: Path, points: list[int]) -> None:
    """Train `run_dir` up to `--stop-at` (or its end), timing each invocation into info["segments"]."""
    steps = cfg.train.steps
    until = min(args.stop_at, steps) if args.stop_at else steps
    start = _newest_step(run_dir)
    if start >= until or info.get("status") == "diverged" or past_deadline(args.no_start_after, "pretrain_vs_scratch"):
        return
    t0 = time.perf_counter()
    hooks = [_stop_at(until)] if until < steps else []
    try:
        result = Trainer(cfg, run_dir).fit(hooks)
        reached = result.step
    except NonFiniteLossError as e:
        info.update(status="diverged", detail=str(e))
        reached = _newest_step(run_dir)
    seconds = time.perf_counter() - t0
    info.setdefault("segments", []).append({"from": start, "to": reached, "seconds": round(seconds, 1)})
    # Keep the evaluation checkpoints and the newest (to resume from); the rest were only for resuming.
    found = list_checkpoints(run_dir / "checkpoints")
    for i, (step, path) in enumerate(found):
        if i > 0 and step not in points:
            shutil.rmtree(path, ignore_errors=True)


def evaluate(args: argparse.Namespace, cfg_net_path: Path, name: str, step: int, judge) -> dict:
    """FID and class accuracy of `--fid-num` EMA samples of one checkpoint; its grid (a row per class)."""
    net, cfg, _ = load_network(cfg_net_path)
    t0 = time.perf_counter()
    images, labels, nfe = generate(net, cfg, range(args.fid_num), args.fid_num, seed=0, batch_size=250)
    sample_s = time.perf_counter() - t0
    grid = args.results / GRIDS / f"{name}-step{step}.png"
    save_image_grid(images[class_rows(labels, 10)], grid, cols=10, scale=3)
    t1 = time.perf_counter()
    fid = fid_against(images, eval_reference(cfg), num_ref=args.fid_num)
    acc = class_accuracy(judge, images, labels)
    return {"fid": fid, "class_acc": acc, "nfe": nfe, "sample_seconds": round(sample_s, 1),
            "fid_seconds": round(time.perf_counter() - t1, 1), "grid": f"{GRIDS}/{grid.name}",
            "status": "ok" if math.isfinite(fid) else "diverged"}


def finetune_arm(args: argparse.Namespace, objective: str, dose: str, seed: int, pre: dict, judge,
                 matched: bool = False) -> dict | None:
    name = arm_name(objective, dose, seed, matched, args.variant)
    out, run_dir = args.work / f"{name}.json", args.work / name
    info = json.loads(out.read_text()) if out.exists() else {
        "objective": objective, "dose": dose, "seed": seed, "matched": matched, "evals": {}}
    if args.variant:
        if info.get("overrides", args.overrides) != args.overrides:
            raise SystemExit(f"{out} was run with --set {info['overrides']}, not {args.overrides}: use another "
                             "--variant name")
        info.update(variant=args.variant, overrides=args.overrides)
    if matched and "extra_steps" not in info:
        ref = args.work / f"{arm_name(objective, '0', seed)}.json"
        base = json.loads(ref.read_text()) if ref.exists() else {}
        segs = base.get("segments", [])
        if not segs:
            print(f"pretrain_vs_scratch: {name} needs the timing of {ref.name} first: skipped")
            return None
        s_per_step = sum(s["seconds"] for s in segs) / max(sum(s["to"] - s["from"] for s in segs), 1)
        info.update(scratch_s_per_step=round(s_per_step, 3), stage1_seconds=pre["seconds"],
                    extra_steps=int(round(pre["seconds"] / s_per_step / 50) * 50))
    extra = info.get("extra_steps", 0)
    points = [e + extra for e in args.eval_steps]
    if all(str(point) in info["evals"] for point in points):  # done (a restored arm has no checkpoints here)
        return info
    gcd = reduce(math.gcd, points)
    init = pre["doses"][dose]["checkpoint"] if not matched else ""
    cfg = get_preset(args.preset, objective, {
        "train.steps": max(points), "train.seed": seed, "train.init_from": init, "train.log_every": 25,
        "train.ckpt_every": gcd, "train.keep_every": gcd, "train.keep_last": 1,
        **TABLE_SETTINGS.get(objective, {}), **args.overrides})
    info.update(steps=cfg.train.steps, eval_points=points, init_from=cfg.train.init_from)
    if cfg.train.init_from != init and "init_knn" not in info:  # a variant's own encoder: probe it as the doses
        info["init_knn"] = KnnProbe(cfg).encoder(load_network(cfg.train.init_from)[0])
    _train(args, info, cfg, run_dir, points)
    if not run_dir.exists():  # nothing started (past the deadline): leave no empty arm behind
        return None
    write_json(out, info)
    have = {step: path for step, path in list_checkpoints(run_dir / "checkpoints")}
    for point in points:
        if str(point) in info["evals"] or point not in have:
            continue
        print(f"pretrain_vs_scratch: {name}: evaluating step {point}", flush=True)
        info["evals"][str(point)] = evaluate(args, have[point], name, point, judge)
        print(f"pretrain_vs_scratch: {name} step {point}: FID {info['evals'][str(point)]['fid']:.2f}, "
              f"class accuracy {info['evals'][str(point)]['class_acc']:.3f}", flush=True)
        write_json(out, info)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fmnist-tiny")
    p.add_argument("--pretrain-steps", type=int, default=DEMO_PRETRAIN_STEPS,
                   help=f"the full stage-1 budget (default: the demo's, {DEMO_PRETRAIN_STEPS})")
    p.add_argument("--doses", type=float, nargs="*", default=[0, 0.25, 0.5, 1],
                   help="shares of the stage-1 run to fine-tune from (0 = random encoder = scratch)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="fine-tuning seeds (train.seed)")
    p.add_argument("--eval-steps", type=int, nargs="*", default=[1000, 2000],
                   help="fine-tuning steps to evaluate at (checkpoints of one run of max(eval-steps) steps)")
    p.add_argument("--stop-at", type=int, default=0, help="train no run past this step now (0 = to its end)")
    p.add_argument("--objectives", nargs="*", default=["diffusion", "consistency"])
    p.add_argument("--matched", action="store_true",
                   help="only the compute-matched scratch arm (per objective and seed; needs dose 0 timed)")
    p.add_argument("--fid-num", type=int, default=1000)
    p.add_argument("--no-start-after", default="", help="HH:MM UTC after which no training run starts")
    p.add_argument("--work", type=Path, default=Path("runs/pretrain_vs_scratch_v3"))
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--variant", default="", help="name of a fine-tuning variant (its arms are reported apart)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="the variant's config overrides of the fine-tuning runs (e.g. optim.layer_decay=0.75)")
    p.add_argument("--report", action="store_true", help="only write the table from finished arms")
    p.add_argument("--restore", action="store_true",
                   help="first copy the arms saved in --results/pretrain_vs_scratch.json that --work lacks into it")
    args = p.parse_args()
    if bool(args.variant) != bool(args.set):
        p.error("--variant and --set go together")
    if any("=" not in kv for kv in args.set):
        p.error(f"--set takes KEY=VALUE pairs, not {[kv for kv in args.set if '=' not in kv]}")
    args.overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.restore:
        n = restore(args.work, args.results / "pretrain_vs_scratch.json")
        print(f"pretrain_vs_scratch: restored {n} record(s) into {args.work}")
    args.work.mkdir(parents=True, exist_ok=True)
    (args.results / GRIDS).mkdir(parents=True, exist_ok=True)
    if not args.report:
        judge, _ = load_or_train()
        pre = pretrain(args)
        for seed in args.seeds:
            for objective in args.objectives:
                if args.matched:
                    finetune_arm(args, objective, "0", seed, pre, judge, matched=True)
                    continue
                for d in args.doses:
                    finetune_arm(args, objective, _dose_key(d), seed, pre, judge)
    report(args)


if __name__ == "__main__":
    main()
