"""Training and sampling throughput: images/s, achieved FLOP/s against a measured GEMM peak, peak memory per step.

For each model and stage it times, after warm-up, the median of several steps of the product's own training step
(`Trainer.train_step` of a real Trainer on random uint8 images: learning rate, forward + backward, clipping, AdamW,
EMA and the stage-1 teacher, bf16 autocast like the engine) for pre-training, diffusion and consistency (with the
frozen W of a stage-1 checkpoint), and one Heun denoiser evaluation with CFG (cond + uncond rows in one forward,
no grad). Every (model, stage) runs in a fresh subprocess (benchmarks/throughput_child.py, which also holds the
models and the FLOP count) so its peak RSS (CPU) or `max_memory_allocated` (GPU) is its own. FLOPs are counted
analytically (METHOD.md §2: 2 × MACs with the attention matmuls, × 3 for forward + backward); the peak is the best
bf16/fp32 GEMM of the models' own shapes in the same run. Before/after ratios: CPU attention through SDPA's math
backend and its fused kernel against the explicit q·kᵀ → softmax → ·v the engine uses (`epg.nn.layers.CPU_ATTENTION`),
AdamW's for-loop and foreach against the fused kernel the engine uses, and glibc malloc told to keep freed memory
(large step-sized temporaries are otherwise unmapped and faulted in every step).
With CUDA, a GPU section times `epg-xl-16-in256` (bf16, flash attention, torch.compile) and reports MFU against the
GPU's measured bf16 GEMM peak; without CUDA it is skipped with a note.

    python benchmarks/throughput.py --quick --threads 1        # smoke test, a few minutes
    python benchmarks/throughput.py --threads 2                # the full table, on a quiet machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from throughput_child import CPU_MODELS, GPU_MODELS, gemm_shapes, model_config  # noqa: E402
from throughput_report import render  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CHILD = Path(__file__).parent / "throughput_child.py"
STAGES = ("pretrain", "diffusion", "consistency", "sampling")
GPU_STAGES = ("diffusion", "sampling")


def run_child(mode: str, spec: dict, timeout: float = 3600) -> dict:
    env = dict(os.environ)
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])  # no oversubscription while torch starts up
    if spec.get("malloc") == "no-trim":  # glibc keeps freed blocks instead of unmapping them: no page faults
        env.update(MALLOC_MMAP_THRESHOLD_=str(2**32), MALLOC_TRIM_THRESHOLD_=str(2**36))
    cmd = [sys.executable, str(CHILD), mode, json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def peaks_of(gemm: list[dict]) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for r in gemm:
        if r["dtype"] not in best or r["gflops"] > best[r["dtype"]]["gflops"]:
            best[r["dtype"]] = r
    return best


CPU_PAIRS = [("diffusion", "attention", "math", "fwd_bwd"), ("diffusion", "attention", "fused", "fwd_bwd"),
             ("sampling", "attention", "math", ""), ("sampling", "attention", "fused", ""),
             ("diffusion", "adamw", "forloop", "adamw"), ("diffusion", "adamw", "foreach", "adamw"),
             ("diffusion", "malloc", "no-trim", "adamw"), ("diffusion", "compile", True, "")]
# torch.compile (inductor, C++ on CPU) is timed at the smallest model only: it compiles for 1–2 minutes per process.
CPU_COMPILE_MODELS = ("fmnist-tiny",)
GPU_PAIRS = [("diffusion", "compile", False, ""), ("sampling", "compile", False, "")]


def section(device: str, models: dict, stages: tuple[str, ...], args: argparse.Namespace, base: dict,
            ratios: bool) -> dict:
    """Peak GEMM, then every (model, stage) and the before/after pairs, each in its own process."""
    batches = {name: row[3] if args.quick else row[2] for name, row in models.items()}
    if args.batch:
        batches = dict.fromkeys(models, args.batch)
    shapes = sorted({s for name in models for s in gemm_shapes(model_config(name, "diffusion", models),
                                                                 batches[name])})
    print(f"[{device}] peak GEMM over {len(shapes)} shapes …", flush=True)
    gemm = run_child("peak", {**base, "shapes": shapes}).get("gemm", [])
    peaks = peaks_of(gemm)
    peak = max((p["gflops"] for p in peaks.values()), default=float("nan"))
    rows, pairs = [], []
    for name in models:
        for stage in stages:
            spec = {**base, "model": name, "stage": stage, "batch": batches[name]}
            print(f"[{device}] {name} {stage} (batch {batches[name]}) …", flush=True)
            r = run_child("one", spec)
            r.update(model=name, stage=stage, batch=batches[name])
            if "achieved_gflops" in r:
                r["percent_of_peak"] = 100 * r["achieved_gflops"] / peak
            rows.append(r)
            print(f"    {_short(r)}", flush=True)
        if not ratios:
            continue
        for stage, switch, other, what in (GPU_PAIRS if device == "cuda" else CPU_PAIRS):
            if device == "cpu" and switch == "compile" and name not in CPU_COMPILE_MODELS:
                continue
            ref = next(r for r in rows if r["model"] == name and r["stage"] == stage)
            print(f"[{device}] {name} {stage} with {switch}={other} …", flush=True)
            alt = run_child("one", {**base, "model": name, "stage": stage, "batch": batches[name], switch: other})
            key = f"{what}_seconds" if what else "seconds"
            pair = {"model": name, "stage": stage, "switch": switch, "before": base[switch], "after": other,
                    "timed": what, "before_s": ref.get(key), "after_s": alt.get(key),
                    "after_step_s": alt.get("seconds"), "error": alt.get("error")}
            if pair["before_s"] and pair["after_s"]:
                pair["ratio"] = pair["after_s"] / pair["before_s"]
            pairs.append(pair)
            print(f"    {pair.get('ratio', alt.get('error'))}", flush=True)
    return {"device": device, "gemm": gemm, "peaks": peaks, "peak_gflops": peak, "rows": rows, "pairs": pairs}


def _short(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    return f"{r['seconds'] * 1e3:.0f} ms, {r['images_per_s']:.1f} img/s, {r['achieved_gflops']:.1f} GFLOP/s"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small batches, 1 warm-up + 2 timed steps")
    p.add_argument("--presets", nargs="*", default=list(CPU_MODELS), choices=list(CPU_MODELS),
                   help="CPU models to measure (`--presets` with no name: skip the CPU section)")
    p.add_argument("--gpu-presets", nargs="*", default=list(GPU_MODELS), choices=list(GPU_MODELS))
    p.add_argument("--reps", type=int, default=None, help="timed steps per measurement (default 5, quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1; GPU +2)")
    p.add_argument("--batch", type=int, default=0, help="one batch size for every model (default: per model)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--no-ratios", action="store_true", help="skip the before/after pairs")
    p.add_argument("--out", type=Path, default=RESULTS / "throughput")
    args = p.parse_args()
    reps = args.reps or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    threads = args.threads or torch.get_num_threads()
    start, load_before = time.perf_counter(), loadavg()
    sections = []
    if args.presets:
        base = {"device": "cpu", "threads": threads, "reps": reps, "warmup": warmup, "precision": "bf16",
                "attention": "explicit", "adamw": "fused", "malloc": "default", "compile": False}
        models = {k: CPU_MODELS[k] for k in args.presets}
        sections.append(section("cpu", models, STAGES, args, base, not args.no_ratios))
    if args.gpu_presets and torch.cuda.is_available():
        base = {"device": "cuda", "threads": 0, "reps": reps, "warmup": warmup + 2, "precision": "bf16",
                "attention": "flash", "adamw": "fused", "compile": True}
        models = {k: GPU_MODELS[k] for k in args.gpu_presets}
        sections.append(section("cuda", models, GPU_STAGES, args, base, not args.no_ratios))
    elif args.gpu_presets:
        note = "skipped: CUDA is not available (this section times epg-xl-16-in256 with bf16, flash, compile)"
        print(f"[cuda] {note}", flush=True)
        sections.append({"device": "cuda", "note": note})
    load_after = loadavg()
    # Before the run nothing of ours is running: a 1-minute load above half a core is somebody else's.
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name(),
           "cpus": os.cpu_count(), "threads": threads, "loadavg_before": load_before, "loadavg_after": load_after,
           "other_load": bool(load_before and load_before[0] > 0.5),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    report = {"quick": args.quick, "reps": reps, "warmup": warmup, "wall_s": time.perf_counter() - start,
              "environment": env, "sections": sections}
    text = render(report)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {args.out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
