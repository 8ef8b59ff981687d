"""Where a training step's time goes: matrix products vs everything else, and the speed-up that bounds (issue #20).

Profiles the product's own `Trainer.train_step` (benchmarks/throughput_child.py's real Trainer on random images,
bf16 autocast as the engine) and one CFG sampling evaluation with `torch.profiler`, sums the self time of the
matrix products (mm, addmm, bmm, the convolution) against every other op, and reports:

- each category's share of the step and the matrix products' achieved GFLOP/s against the GEMM peak;
- the ceiling: the speed-up if every non-matrix op cost nothing (step / matrix time), i.e. what any fusion of
  the element-wise work (torch.compile, custom kernels) could give at most with these GEMMs.

    python benchmarks/step_profile.py --threads 1 --batch 64
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
import throughput_child as child  # noqa: E402
from results_io import write_results  # noqa: E402
from throughput import loadavg  # noqa: E402

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution", "aten::convolution_backward"}
RESULTS = Path(__file__).parent / "results"


def profile_stage(model: str, stage: str, batch: int, steps: int) -> dict:
    """Self CPU time per op over `steps` steps after two warm-up steps."""
    spec = {"device": "cpu", "precision": "bf16", "batch": batch, "model": model, "stage": stage, "compile": False}
    cfg = child.model_config(model, stage, child.CPU_MODELS)
    with tempfile.TemporaryDirectory() as work:
        trainer = child._trainer(spec, child.CPU_MODELS, Path(work))
        step = child.steady_step(trainer)
        for k in range(2):
            step(k)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for k in range(steps):
                step(2 + k)
        trainer.close()
    ops = {e.key: e.self_cpu_time_total / 1e6 / steps for e in prof.key_averages()}
    total = sum(ops.values())
    mat = sum(t for k, t in ops.items() if k in MATMUL)
    flops = child.flops_per_image(cfg, stage) * batch
    top = sorted(((k, t) for k, t in ops.items() if k not in MATMUL), key=lambda kv: -kv[1])[:6]
    return {"model": model, "stage": stage, "batch": batch, "step_s": total, "matmul_s": mat,
            "matmul_share": mat / total, "matmul_gflops": flops / mat / 1e9, "ceiling": total / mat,
            "top_other": [{"op": k, "share": t / total} for k, t in top]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fmnist-tiny", choices=list(child.CPU_MODELS))
    p.add_argument("--stages", nargs="*", default=["diffusion", "pretrain", "consistency"])
    p.add_argument("--batch", type=int, default=64, help="default: the CPU presets' training batch")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "step_profile")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load_before = loadavg()
    shapes = child.gemm_shapes(child.model_config(a.model, "diffusion", child.CPU_MODELS), a.batch)
    peak = max(r["gflops"] for r in child.peak_gemm({"device": "cpu", "reps": 5, "shapes": shapes})["gemm"]
               if r["dtype"] == "bfloat16")
    rows = [profile_stage(a.model, s, a.batch, a.steps) for s in a.stages]
    lines = [f"# Where the training step's time goes ({a.model}, batch {a.batch}, bf16, {a.threads} thread(s))", "",
             f"torch {torch.__version__}, {os.cpu_count()} CPUs; load average before {load_before}, after "
             f"{loadavg()}. Self CPU time of `torch.profiler` over {a.steps} steps of the real `Trainer.train_step`; "
             f"bf16 GEMM peak of the model's shapes in this run: {peak:.0f} GFLOP/s.", "",
             "| stage | step ms | matrix products | their GFLOP/s | % of GEMM peak | ceiling if all else were free | "
             "largest other ops |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        other = ", ".join(f"{o['op'].removeprefix('aten::')} {100 * o['share']:.0f} %" for o in r["top_other"])
        lines.append(f"| {r['stage']} | {1e3 * r['step_s']:.0f} | {100 * r['matmul_share']:.0f} % | "
                     f"{r['matmul_gflops']:.0f} | {100 * r['matmul_gflops'] / peak:.0f} % | {r['ceiling']:.2f}× | "
                     f"{other} |")
    lines += ["", "Matrix products = mm, addmm, bmm and the patch convolution (forward and backward). The ceiling is "
              "step time / matrix time: no change to the element-wise work (fusion, other kernels, compile) can make "
              "the step faster than that while the GEMMs stay as they are.", ""]
    write_results(a.out, "\n".join(lines), {"peak_gflops": peak, "threads": a.threads, "rows": rows,
                                             "loadavg_before": load_before})


if __name__ == "__main__":
    main()
