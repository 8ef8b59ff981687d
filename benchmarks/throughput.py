"""Training and sampling throughput: images/s, achieved FLOP/s against a measured GEMM peak, peak memory per step.

For each model and stage it times, after warm-up, the median of several steps of the product's own training step
(`Trainer.train_step` of a real Trainer on random uint8 images: learning rate, forward + backward, clipping, AdamW,
EMA and the stage-1 teacher, bf16 autocast like the engine) for pre-training, diffusion and consistency (with the
frozen W of a stage-1 checkpoint), and one Heun denoiser evaluation with CFG (cond + uncond rows in one forward,
no grad). Every (model, stage) runs
in a fresh subprocess so its peak RSS (CPU) or `max_memory_allocated` (GPU) is its own. FLOPs are counted
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
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from epg.config import Config, apply_overrides
from epg.engine.setup import param_groups
from epg.engine.trainer import Trainer
from epg.nn import autocast, build_generator, generator_compute, rcm_compute, x0_prediction
from epg.nn import layers as nn_layers
from epg.nn.flops import model_compute
from epg.presets import get_preset
from epg.sampling import guided_denoiser

sys.path.insert(0, str(Path(__file__).parent))
from throughput_report import render  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ENC_B = {"model.enc_depth": 12, "model.enc_width": 768, "model.enc_heads": 12, "model.dec_width": 768,
         "model.dec_heads": 12}
# name → (preset, overrides, batch, --quick batch)
CPU_MODELS = {
    "fmnist-tiny": ("fmnist-tiny", {}, 32, 8),
    "fmnist-small": ("fmnist-small", {}, 16, 8),
    "fmnist-small-B": ("fmnist-small", ENC_B, 8, 2),  # the paper's B encoder (and a B-sized decoder), 66 tokens
}
GPU_MODELS = {"epg-xl-16-in256": ("epg-xl-16-in256", {}, 64, 8)}
STAGES = ("pretrain", "diffusion", "consistency", "sampling")
GPU_STAGES = ("diffusion", "sampling")
SAMPLE_SIGMA = 1.0  # unshifted σ inside the guidance interval (0.19, 1.61]: the evaluation runs both CFG rows


def model_config(name: str, stage: str, models: dict) -> Config:
    preset, overrides, _, _ = models[name]
    return get_preset(preset, "diffusion" if stage == "sampling" else stage, dict(overrides))


def flops_per_image(cfg: Config, stage: str) -> float:
    """Real FLOPs one image costs in one step (2 × MACs incl. attention; backward = 2 × forward)."""
    m = cfg.model
    encoder = model_compute(m.img_size, m.patch, m.channels, m.enc_depth, m.enc_width,
                            mlp_ratio=m.mlp_ratio).forward_flops
    rcm = rcm_compute(m).forward_flops  # encoder + projector (on the CLS vector only)
    if stage == "pretrain":
        branch = rcm if cfg.pretrain.consistency_features == "projector" else encoder  # default LN(CLS): no g
        return (3 * branch  # consistency query h_θ(x0 + t_n'ε): forward + backward
                + 1 * branch  # consistency target h_θ(x0 + t_{n+1}'ε): online net, no grad
                + 2 * 3 * rcm  # contrastive queries g_θ(E_θ(y1)), g_θ(E_θ(y2)): forward + backward
                + 2 * 1 * rcm)  # EMA-teacher keys for both views: forward only
    generator = generator_compute(m).forward_flops
    if stage == "diffusion":
        return 3 * generator  # x̂0 = G(c_in·x_σ, …): forward + backward
    if stage == "sampling":
        return 2 * generator  # cond + uncond rows of one CFG evaluation, forward only
    w = rcm if cfg.consistency.aux_features == "projector" else encoder
    aux = cfg.consistency.aux_weight > 0
    return (3 * generator  # online f_θ(x_t, t'): forward + backward
            + 1 * generator  # target f_θ(x_r, r'): same weights, no grad
            + aux * 2 * w  # W(f_θ(x_t)): forward + backward to its input only (W is frozen: no weight gradients)
            + aux * 1 * w)  # key W(x0): forward, no grad
    # Not counted: InfoNCE logits (B × B × D per step, < 0.1 %), normalisations, AdamW/EMA (element-wise).


def gemm_shapes(cfg: Config, batch: int) -> list[tuple[int, int, int]]:
    """(rows, in, out) of the model's big linear layers: qkv (3w), fc1 (4w), fc2 (4w → w)."""
    m = cfg.model
    rows = ((m.img_size // m.patch) ** 2 + 2) * batch
    return sorted({s for w in (m.enc_width, m.dec_width) for s in ((rows, w, 3 * w), (rows, w, 4 * w),
                                                                    (rows, 4 * w, w))})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------ child processes

def peak_gemm(spec: dict) -> dict:
    """GFLOP/s of F.linear at each shape, bf16 and fp32: median of `reps` timings after warm-up."""
    device = torch.device(spec["device"])
    calls = 20 if device.type == "cuda" else 1  # a GPU GEMM is too short to time one by one
    out = []
    for dtype in (torch.bfloat16, torch.float32):
        for rows, k, n in spec["shapes"]:
            x = torch.randn(rows, k, device=device, dtype=dtype)
            w = torch.randn(n, k, device=device, dtype=dtype)
            times = []
            for i in range(spec["reps"] + 2):
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(calls):
                    torch.nn.functional.linear(x, w)
                _sync(device)
                if i >= 2:
                    times.append((time.perf_counter() - t0) / calls)
            gflops = 2 * rows * k * n / statistics.median(times) / 1e9
            out.append({"dtype": str(dtype).split(".")[-1], "shape": [rows, k, n], "gflops": round(gflops, 1)})
    return {"gemm": out}


class _Images(torch.utils.data.Dataset):
    """Random uint8 images with labels, of the model's shape (what the step costs does not depend on content)."""

    def __init__(self, cfg: Config, n: int):
        m, g = cfg.model, torch.Generator().manual_seed(0)
        self.channels, self.num_classes = m.channels, m.num_classes
        self.images = torch.randint(0, 256, (n, m.channels, m.img_size, m.img_size), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, max(m.num_classes, 1), (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def _trainer(spec: dict, models: dict, work: Path) -> Trainer:
    """A real Trainer of the spec's run (consistency: --init a step-0 stage-1 checkpoint, for the frozen W)."""
    over = {"train.device": spec["device"], "train.precision": spec["precision"], "train.global_batch": spec["batch"],
            "train.steps": 10**6, "train.ckpt_every": 10**6, "train.log_every": 10**6, "train.knn_every": 0,
            "train.sample_every": 0, "train.fid_every": 0, "data.workers": 0, "train.compile": spec["compile"]}
    cfg = apply_overrides(model_config(spec["model"], spec["stage"], models), over)
    data = _Images(cfg, 4 * spec["batch"])
    if cfg.stage == "consistency":
        w = Trainer(apply_overrides(model_config(spec["model"], "pretrain", models), over), work / "w", dataset=data)
        w.save_checkpoint()
        w.close()
        cfg.train.init_from = str(work / "w")
    return Trainer(cfg, work / "run", dataset=data)


def _timed_adamw(opt: torch.optim.Optimizer, device: torch.device, seconds: list[float]) -> None:
    """Record how long each optimizer step takes (the engine calls it through the loss scaler)."""
    inner = opt.step

    def step(*args, **kwargs):
        _sync(device)
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        _sync(device)
        seconds.append(time.perf_counter() - t0)
        return out

    opt.step = step


def measure_step(spec: dict) -> dict:
    """Median time of the product's step of (model, stage) with the spec's switches; peak memory."""
    device = torch.device(spec["device"])
    rss_import = _rss_mib()
    models = GPU_MODELS if device.type == "cuda" else CPU_MODELS
    stage, batch = spec["stage"], spec["batch"]
    cfg = model_config(spec["model"], stage, models)
    m = cfg.model
    if spec["attention"] in ("fused", "math"):
        nn_layers.CPU_ATTENTION = spec["attention"]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, max(m.num_classes, 1), (batch,), generator=g).to(device)
    step0 = cfg.optim.warmup_steps + 1  # past warm-up: gradient clipping on, as in steady-state training
    adamw: list[float] = []
    with tempfile.TemporaryDirectory() as work:
        if stage == "sampling":
            net = build_generator(m).to(device).eval()
            if spec["compile"]:
                net.compile()
            denoiser = guided_denoiser(lambda x, s, y: x0_prediction(net, x, s, y, cfg.noise.sigma_data).float(),
                                       cfg.sample.cfg_scale, m.num_classes, cfg.sigma_shift)
            x = torch.randn(batch, m.channels, m.img_size, m.img_size, generator=g).to(device)
            sigma = torch.full((batch,), SAMPLE_SIGMA * cfg.sigma_shift, device=device)

            @torch.no_grad()
            def step(k: int) -> None:
                with autocast(device, spec["precision"]):
                    denoiser(x, sigma, labels if m.num_classes else None)
        else:
            trainer = _trainer(spec, models, Path(work))
            net, model = trainer.model.net, trainer.model
            if spec["adamw"] != "fused":
                model.opt = torch.optim.AdamW(param_groups(net, trainer.cfg), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                              eps=cfg.optim.eps, foreach=spec["adamw"] == "foreach")
            _timed_adamw(model.opt, device, adamw)
            batches = iter(trainer._loader())

            def step(k: int) -> None:
                trainer.step = step0 + k
                trainer.train_step([next(batches) for _ in range(trainer.batching.accum)])
        times = _time(step, spec, device)
        if stage != "sampling":
            trainer.close()
    seconds = statistics.median(times)
    flops = flops_per_image(cfg, stage) * batch
    out = {"seconds": seconds, "times": [round(t, 4) for t in times], "images_per_s": batch / seconds,
           "gflop_per_image": flops / batch / 1e9, "achieved_gflops": flops / seconds / 1e9,
           "params_m": sum(p.numel() for p in net.parameters()) / 1e6, "rss_import_mib": rss_import,
           "peak_rss_mib": _rss_mib()}
    if adamw:
        out["adamw_seconds"] = statistics.median(adamw[spec["warmup"]:])
        out["fwd_bwd_seconds"] = statistics.median(t - a for t, a in zip(times, adamw[spec["warmup"]:]))
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _time(step, spec: dict, device: torch.device) -> list[float]:
    sdpa = (torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION)
            if device.type == "cuda" and spec["attention"] == "flash" else contextlib.nullcontext())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with sdpa:
        for k in range(spec["warmup"] + spec["reps"]):
            _sync(device)
            t0 = time.perf_counter()
            step(k)
            _sync(device)
            if k >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
    return times


def child_main(mode: str, spec: dict) -> None:
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    result = peak_gemm(spec) if mode == "peak" else measure_step(spec)
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------ the parent

def run_child(mode: str, spec: dict, timeout: float = 3600) -> dict:
    env = dict(os.environ)
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])  # no oversubscription while torch starts up
    if spec.get("malloc") == "no-trim":  # glibc keeps freed blocks instead of unmapping them: no page faults
        env.update(MALLOC_MMAP_THRESHOLD_=str(2**32), MALLOC_TRIM_THRESHOLD_=str(2**36))
    cmd = [sys.executable, __file__, f"--{mode}", json.dumps(spec)]
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
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--peak", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one or args.peak:
        child_main("one" if args.one else "peak", json.loads(args.one or args.peak))
        return
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
