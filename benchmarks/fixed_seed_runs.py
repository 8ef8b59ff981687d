"""Fixed-seed 50-step fp32 runs of every stage, and a bit-for-bit comparison of two such sets (issue #18).

A change that should not change behaviour (a restructuring) must give the same `log.jsonl` losses and the same
weights. Run the set once with the code before the change and once after, then compare:

    PYTHONPATH=../before/src python benchmarks/fixed_seed_runs.py --out runs/fixed50-before
    python benchmarks/fixed_seed_runs.py --out runs/fixed50-after
    python benchmarks/fixed_seed_runs.py --compare runs/fixed50-before runs/fixed50-after

The runs use one thread (bit-identical CPU arithmetic), fmnist-tiny, seed 7; stage 2 starts from the stage-1 run
(`--init`), so the consistency run has its auxiliary term. Timing fields (img_per_s) are left out of the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

STAGES = {"pretrain": ["pretrain"], "diffusion": ["finetune", "--objective", "diffusion"],
          "consistency": ["finetune", "--objective", "consistency"]}
COMMON = ["--preset", "fmnist-tiny", "--steps", "50", "--train.precision", "fp32", "--train.log_every", "5",
          "--train.sample_every", "0", "--train.fid_every", "0", "--train.knn_every", "0", "--train.seed", "7"]


def run_all(out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for stage, command in STAGES.items():
        init = ["--init", str(out / "pretrain")] if stage != "pretrain" else []
        args = [sys.executable, "-m", "epg", *command, *COMMON, *init, "--run-dir", str(out / stage)]
        print(" ".join(args[1:]), flush=True)
        subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"}
            for line in (run / "log.jsonl").read_text().splitlines() if line]


def compare(a: Path, b: Path) -> bool:
    same = True
    for stage in STAGES:
        logs = _rows(a / stage) == _rows(b / stage)
        ckpt = "checkpoints/step-00000050"
        weights = all((a / stage / ckpt / f).read_bytes() == (b / stage / ckpt / f).read_bytes()
                      for f in ("model.safetensors", "ema.safetensors") if (a / stage / ckpt / f).exists())
        print(f"{stage}: log.jsonl {'identical' if logs else 'DIFFERENT'} ({len(_rows(a / stage))} rows), "
              f"step-50 weights {'identical' if weights else 'DIFFERENT'}")
        same &= logs and weights
    return same


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="run the three stages into this folder (it must not exist)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    a = p.parse_args()
    if a.out:
        if a.out.exists():
            p.error(f"{a.out} exists; choose a new folder")
        run_all(a.out)
    if a.compare:
        sys.exit(0 if compare(*a.compare) else 1)


if __name__ == "__main__":
    main()
