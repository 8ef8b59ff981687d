"""What fine-tuning does to the encoder: k-NN of the generator's encoder before and after (issue #15).

For every arm of benchmarks/pretrain_vs_scratch.py (its `--work` folder) and every evaluated checkpoint, the k-NN
probe of LN(CLS) of the fine-tuned generator's encoder (EMA weights, the ones that sample; the class embedding is
not added, as for a stage-1 encoder) at unshifted σ_min and σ = 2, beside the same probe of the encoder the arm
started from. If scratch arms end with the same k-NN as pre-trained ones, fine-tuning itself learns (or erases)
what stage 1 learnt, and the initial encoder cannot matter for the generator.

    python benchmarks/finetuned_knn.py --work runs/pretrain_vs_scratch_v3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from results_io import write_results

from epg.engine.checkpoint import list_checkpoints, load_network
from epg.metrics.knn import KnnProbe
from epg.nn import build_rcm

SIGMAS = (0.002, 2.0)
RESULTS = Path(__file__).parent / "results"


def start_encoder(arm: dict, cfg) -> torch.nn.Module:
    """The encoder the arm's fine-tuning started from: its stage-1 checkpoint, or (scratch) a random init drawn
    with the arm's seed — of the same distribution as the run's own, not necessarily the very same tensors."""
    if arm.get("init_from"):
        return load_network(arm["init_from"], prefer_ema=False)[0]
    torch.manual_seed(arm["seed"])
    return build_rcm(cfg.model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/pretrain_vs_scratch_v3"))
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args()
    cache = a.work / "finetuned_knn.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    probe = None
    for path in sorted(a.work.glob("*-seed*.json")):
        arm = json.loads(path.read_text())
        for step, ckpt in list_checkpoints(a.work / path.stem / "checkpoints"):
            key = f"{path.stem}@{step}"
            if key in done or str(step) not in arm["evals"]:
                continue
            net, cfg, _ = load_network(ckpt)
            probe = probe or KnnProbe(cfg)
            start = start_encoder(arm, cfg)
            done[key] = {"arm": path.stem, "step": step, "fid": arm["evals"][str(step)]["fid"],
                         "before": {str(s): probe.encoder(start, s) for s in SIGMAS},
                         "after": {str(s): probe.encoder(net.encoder, s) for s in SIGMAS}}
            print(key, done[key], flush=True)
            cache.write_text(json.dumps(done, indent=2) + "\n")
    lines = ["# The generator's encoder before and after fine-tuning (k-NN of LN(CLS), fmnist-tiny)", "",
             f"Arms of `benchmarks/pretrain_vs_scratch.py` in `{a.work}`; probe as everywhere (5 000 / 1 000 images, "
             "20-NN cosine, fixed noise); EMA weights after fine-tuning, class embedding not added. σ unshifted.", "",
             "| arm | step | FID | k-NN before, σ_min | after, σ_min | before, σ = 2 | after, σ = 2 |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(done.values(), key=lambda r: (r["arm"], r["step"])):
        b, f = r["before"], r["after"]
        lines.append(f"| {r['arm']} | {r['step']} | {r['fid']:.1f} | {b['0.002']:.3f} | {f['0.002']:.3f} | "
                     f"{b['2.0']:.3f} | {f['2.0']:.3f} |")
    lines += ["", f"Rerun: `python benchmarks/finetuned_knn.py --work {a.work}`.", ""]
    write_results(a.results / "finetuned_knn", "\n".join(lines), done)


if __name__ == "__main__":
    main()
