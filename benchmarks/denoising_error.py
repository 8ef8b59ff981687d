"""x̂0's error per noise level for several diffusion checkpoints side by side (issue #15: what a recipe changes).

For each run directory's newest checkpoint, the EMA network's x̂0 MSE against x0
at each unshifted σ on the same 256 held-out test images with the same fixed noise (`sigma_sensitivity.
denoising_mse`), beside the FID that the ablation's result file next to the run directory (`<run>.json`, written
by pretrain_vs_scratch.py) has for that step. Copying the input
scores (σ·s)² (s = 0.5 at 32 pixels); the class mean ≈ 0.16. Writes a table and JSON.

    python benchmarks/denoising_error.py runs/pretrain_vs_scratch_v3/diffusion-lr1e-3-dose1-seed0 \
        runs/pretrain_vs_scratch_v3/diffusion-lr1e-3-edm-cap40-dose1-seed0 --out denoising_error
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from results_io import write_results  # benchmarks/ is on sys.path when run as a script
from sigma_sensitivity import denoising_mse

from epg.engine.checkpoint import list_checkpoints, load_network

SIGMAS = (0.002, 0.01, 0.1, 0.5, 2.0, 10.0, 80.0)  # unshifted


def _checkpoint(run: Path) -> tuple[Path, int]:
    """The newest checkpoint of a run directory and its step."""
    found = list_checkpoints(run / "checkpoints")
    if not found:
        raise SystemExit(f"denoising_error: {run} has no checkpoints/step-* directory; pass a run directory")
    return found[0][1], found[0][0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--n", type=int, default=256, help="held-out images")
    p.add_argument("--out", default="denoising_error", help="name of the table and JSON in --results")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    rows = []
    for run in args.runs:
        ckpt, step = _checkpoint(run)
        net, cfg, _ = load_network(ckpt)
        with torch.no_grad():
            mse = denoising_mse(net, cfg, SIGMAS, args.n, seed=0)
        arm = run.parent / f"{run.name}.json"  # the ablation's result file beside its run directory
        fid = json.loads(arm.read_text())["evals"].get(str(step), {}).get("fid") if arm.exists() else None
        rows.append({"run": run.name, "step": step, "fid": fid, "x0_mse": dict(zip(map(str, SIGMAS), mse))})
        print(f"denoising_error: {run.name} step {step}: " + " ".join(f"{m:.4f}" for m in mse), flush=True)
    lines = [f"# x̂0 MSE per noise level (EMA weights, {args.n} test images, fixed noise)", "",
             "Copying the input scores (σ·0.5)²; predicting the class mean ≈ 0.16. Rerun: "
             f"`python benchmarks/denoising_error.py {' '.join(os.path.relpath(r) for r in args.runs)}`.", "",
             "| run | step | FID | " + " | ".join(f"σ = {s:g}" for s in SIGMAS) + " |",
             "|---|---|---|" + "---|" * len(SIGMAS)]
    for r in rows:
        fid = f"{r['fid']:.1f}" if r["fid"] is not None else "–"
        lines.append(f"| {r['run']} | {r['step']} | {fid} | " + " | ".join(f"{v:.4f}" for v in r["x0_mse"].values())
                     + " |")
    write_results(args.results / args.out, "\n".join(lines), {"sigmas": SIGMAS, "n": args.n, "rows": rows})


if __name__ == "__main__":
    main()
