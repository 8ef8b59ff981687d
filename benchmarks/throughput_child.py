"""The measuring side of benchmarks/throughput.py: one (model, stage) step, or the GEMM peak, in this process.

The parent runs every measurement as `python benchmarks/throughput_child.py one|peak SPEC_JSON` in a fresh process,
so that each one's peak RSS (CPU) or `max_memory_allocated` (GPU) is its own; the result is the last line of stdout
as JSON. The models, the FLOP count and the GEMM shapes live here, and the parent imports them.
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
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

ENC_B = {"model.enc_depth": 12, "model.enc_width": 768, "model.enc_heads": 12, "model.dec_width": 768,
         "model.dec_heads": 12}
# name → (preset, overrides, batch, --quick batch)
CPU_MODELS = {
    "fmnist-tiny": ("fmnist-tiny", {}, 32, 8),
    "fmnist-small": ("fmnist-small", {}, 16, 8),
    "fmnist-small-B": ("fmnist-small", ENC_B, 8, 2),  # the paper's B encoder (and a B-sized decoder), 66 tokens
}
GPU_MODELS = {"epg-xl-16-in256": ("epg-xl-16-in256", {}, 64, 8)}

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


def steady_step(trainer: Trainer):
    """`step(k)`: the Trainer's real `train_step` at step warm-up + 1 + k (past warm-up: gradient clipping on, as
    in steady-state training), on the next batches of its own loader."""
    batches = iter(trainer._loader())
    step0 = trainer.cfg.optim.warmup_steps + 1

    def step(k: int) -> None:
        trainer.step = step0 + k
        trainer.train_step([next(batches) for _ in range(trainer.batching.accum)])
    return step


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
            step = steady_step(trainer)
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


if __name__ == "__main__":
    child_main(sys.argv[1], json.loads(sys.argv[2]))
