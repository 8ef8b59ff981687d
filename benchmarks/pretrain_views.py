"""Stage-1 step with both contrastive views as one encoder batch vs one encoder call per view (issue #20).

The pre-training step runs the encoder on the consistency pair and on two contrastive views for the online network
and the EMA teacher. `epg.objectives.pretrain.BATCH_VIEWS` sends the two views through the encoder as one batch of
2B (the projector's BatchNorm still sees each view alone; tests/test_pretrain.py checks the outputs agree in fp32).
This times the real `Trainer.train_step` of fmnist-tiny both ways, interleaved (round-robin over `--rounds`,
medians), so machine load hits both alike.

    python benchmarks/pretrain_views.py --threads 1 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results_io import write_results  # noqa: E402
from throughput import loadavg  # noqa: E402
from throughput_child import CPU_MODELS, _trainer, steady_step  # noqa: E402

import epg.objectives.pretrain as pretrain_mod  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PATHS = {"two calls": False, "one batch": True}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=64, help="default: the CPU presets' training batch")
    p.add_argument("--precisions", nargs="*", default=["bf16", "fp32"])
    p.add_argument("--out", type=Path, default=RESULTS / "pretrain_views")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load_before = loadavg()
    rows, default = [], pretrain_mod.BATCH_VIEWS
    for precision in a.precisions:
        with tempfile.TemporaryDirectory() as work:
            spec = {"model": "fmnist-tiny", "stage": "pretrain", "device": "cpu", "precision": precision,
                    "batch": a.batch, "compile": False}
            trainer = _trainer(spec, CPU_MODELS, Path(work))
            step = steady_step(trainer)
            times: dict[str, list[float]] = {k: [] for k in PATHS}
            k = 0
            for r in range(a.rounds + 1):  # the first round warms up and is not timed
                for name, batched in PATHS.items():
                    pretrain_mod.BATCH_VIEWS = batched
                    t0 = time.perf_counter()
                    step(k)
                    k += 1
                    if r:
                        times[name].append(time.perf_counter() - t0)
            trainer.close()
        pretrain_mod.BATCH_VIEWS = default
        med = {n: statistics.median(ts) for n, ts in times.items()}
        row = {"precision": precision, "batch": a.batch, "ms": {n: round(1e3 * t, 1) for n, t in med.items()},
               "speed": round(med["two calls"] / med["one batch"], 3),
               "ratios": [round(x / y, 3) for x, y in zip(times["two calls"], times["one batch"])]}
        print(row, flush=True)
        rows.append(row)
    lines = [f"# Stage-1 step: contrastive views as one encoder batch vs two calls (fmnist-tiny, batch {a.batch}, "
             f"{a.threads} thread(s), median of {a.rounds} interleaved rounds)", "",
             f"torch {torch.__version__}; load average {load_before} before, {loadavg()} after.", "",
             "| precision | two calls ms | one batch ms | speed-up | per-round ratios |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['ms']['two calls']:.1f} | {r['ms']['one batch']:.1f} | "
                     f"{r['speed']:.2f}× | {min(r['ratios']):.2f}–{max(r['ratios']):.2f} |")
    rerun = f"python benchmarks/pretrain_views.py --threads {a.threads} --rounds {a.rounds} --batch {a.batch}"
    lines += ["", f"Rerun: `{rerun}`.", ""]
    write_results(a.out, "\n".join(lines), {"loadavg_before": load_before, "rows": rows})


if __name__ == "__main__":
    main()
