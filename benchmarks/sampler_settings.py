"""The sampler's settings on one trained CPU model: guidance scale × sampler × steps, EMA or online weights (#15).

The CPU presets sample with the paper's ImageNet settings (METHOD.md §6: CFG 2.5 inside the guidance interval,
deterministic Heun, 32 steps). Those were chosen for a large, well-trained model; this benchmark asks what suits a
small, briefly trained one (`stochastic` = EDM's churned Heun with the config's S_churn, S_tmin, S_tmax, S_noise).
For one diffusion checkpoint (EMA weights, or `--online`) it draws the same `--num` class-balanced samples
(sample seed 0) under every setting of the grid and reports FID against the test split and the class accuracy of
the samples judged by the benchmark classifier (benchmarks/fmnist_classifier.py), with a grid per setting.
Each setting's result is a JSON file in `--work`, so a rerun only adds what is missing.

    python benchmarks/sampler_settings.py runs/demo-s6/diffusion --cfg 1 2.5 --samplers heun
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import time
from pathlib import Path

from fmnist_classifier import class_accuracy, load_or_train
from results_io import write_results

from epg.config import apply_overrides
from epg.engine.checkpoint import load_network
from epg.engine.runlog import class_rows, save_image_grid
from epg.evaluation import eval_reference
from epg.generate import generate
from epg.metrics import fid_against

RESULTS = Path(__file__).parent / "results"
WORK = Path("runs/sampler_settings")


def name_of(cfg_scale: float, sampler: str, steps: int, online: bool) -> str:
    return f"cfg{cfg_scale:g}-{sampler}-steps{steps}{'-online' if online else ''}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a diffusion run or checkpoint directory")
    p.add_argument("--cfg", type=float, nargs="*", default=[1.0, 1.5, 2.5], help="sample.cfg_scale values")
    p.add_argument("--samplers", nargs="*", default=["heun"], choices=["heun", "stochastic"], help="sample.sampler")
    p.add_argument("--steps", type=int, nargs="*", default=[0], help="sample.steps values (0: the checkpoint's)")
    p.add_argument("--online", action="store_true", help="the online weights instead of the EMA")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args()
    net, cfg0, path = load_network(a.checkpoint, prefer_ema=not a.online)
    judge, judge_meta = load_or_train()
    a.work.mkdir(parents=True, exist_ok=True)
    (a.results / "sampler_settings").mkdir(parents=True, exist_ok=True)
    rows = []
    for scale, sampler, steps in itertools.product(a.cfg, a.samplers, a.steps):
        steps = steps or cfg0.sample.steps
        name = name_of(scale, sampler, steps, a.online)
        out = a.work / f"{name}.json"
        if out.exists() and json.loads(out.read_text())["checkpoint"] == str(path):
            rows.append(json.loads(out.read_text()))
            continue
        over = {"sample.cfg_scale": scale, "sample.sampler": sampler, "sample.steps": steps}
        cfg = apply_overrides(copy.deepcopy(cfg0), over)
        t0 = time.perf_counter()
        images, labels, nfe = generate(net, cfg, range(a.num), a.num, seed=0, batch_size=250)
        sample_s = time.perf_counter() - t0
        grid = a.results / "sampler_settings" / f"{name}.png"
        save_image_grid(images[class_rows(labels, 10)], grid, cols=10, scale=3)
        row = {"name": name, "checkpoint": str(path), "weights": "online" if a.online else "EMA",
               "cfg_scale": scale, "sampler": sampler, "steps": steps,
               "nfe": nfe, "fid": fid_against(images, eval_reference(cfg), num_ref=a.num),
               "class_acc": class_accuracy(judge, images, labels), "sample_seconds": round(sample_s, 1),
               "grid": f"sampler_settings/{grid.name}"}
        out.write_text(json.dumps(row, indent=2) + "\n")
        print(f"{name}: FID {row['fid']:.2f}, class accuracy {row['class_acc']:.3f}, NFE {nfe}", flush=True)
        rows.append(row)
    base = (cfg0.sample.cfg_scale, cfg0.sample.sampler, cfg0.sample.steps, "EMA")
    lines = [f"# Sampler settings on one model (`{path}`)", "",
             f"{a.num} class-balanced samples, sample seed 0, the same under every setting; FID against the test "
             "split; class accuracy = share of samples the benchmark classifier assigns to their label (its own test "
             f"accuracy {judge_meta['test_accuracy']:.4f}). The checkpoint's own setting (the preset's) is marked ★. "
             f"One model and one sample seed: differences of a few FID points are noise.", "",
             "| weights | CFG scale | sampler | steps | NFE | FID | class acc | sampling s | grid |",
             "|---|---|---|---|---|---|---|---|---|"]
    # Rows of the other weights (an earlier run with or without --online) stay in the table.
    seen = {r["name"] for r in rows}
    others = (json.loads(f.read_text()) for f in sorted(a.work.glob("*.json")) if f.stem not in seen)
    rows += [r for r in others if r["checkpoint"] == str(path)]
    for r in sorted(rows, key=lambda r: r["fid"] if math.isfinite(r["fid"]) else math.inf):
        star = " ★" if (r["cfg_scale"], r["sampler"], r["steps"], r["weights"]) == base else ""
        lines.append(f"| {r['weights']} | {r['cfg_scale']:g}{star} | {r['sampler']} | {r['steps']} | "
                     f"{r['nfe']} | {r['fid']:.2f} | "
                     f"{r['class_acc']:.3f} | {r['sample_seconds']:.0f} | [png]({r['grid']}) |")
    where = "".join(f" --{k} {v}" for k, v, default in (("work", a.work, WORK), ("results", a.results, RESULTS))
                    if v != default)  # a table kept apart from the default one names its folders
    lines += ["", f"Rerun a row: `python benchmarks/sampler_settings.py {a.checkpoint}{where} --cfg SCALE --samplers "
              "SAMPLER [--steps N] [--online]` (rows already in `--work` are only re-read).", ""]
    write_results(a.results / "sampler_settings", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
