"""Presets: the paper's rows (METHOD.md §2–§5) and small CPU rows on Fashion-MNIST."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable

from epg.config import ALIASES, Config, ConfigError, ModelConfig, OptimConfig, apply_overrides
from epg.stages import stage_of

# (stage, steps) → config; `steps` (None = the preset's own) sets the run length, and every field derived from it
# (warm-up, lr milestones, ECT stage length, checkpoint/log/probe intervals) follows unless set explicitly.
Builder = Callable[[str | None, int | None], Config]
ENC_B = dict(enc_depth=12, enc_width=768, enc_heads=12)
ENC_L = dict(enc_depth=16, enc_width=1024, enc_heads=16)


def _in(res: int, patch: int, **model) -> ModelConfig:
    return ModelConfig(img_size=res, channels=3, patch=patch, num_classes=1000, **model)


def _paper_common(cfg: Config) -> Config:
    # data.source: a packed dir made by `epg prepare`; set with --data
    return apply_overrides(cfg, {"data.source": "imagenet", "data.workers": 8, "noise.normalization": "imagenet",
                                 "train.seed": 1234, "train.ckpt_every": 10_000, "train.log_every": 100,
                                 "train.sample_every": 50_000, "train.fid_every": 0, "train.fid_num": 10_000})


# stage → (optimiser, steps, what else the stage sets); every stage trains at batch 1024.
PAPER_RECIPES: dict[str, tuple[OptimConfig, int, dict]] = {
    "pretrain": (OptimConfig(lr=2e-4, betas=(0.9, 0.95), weight_decay=0.03, wd_exclude="none", warmup_steps=10_000,
                             schedule="cosine", grad_clip=0.0, ema=0.0), 600_000, {}),
    "diffusion": (OptimConfig(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01, wd_exclude="pos_cls",
                              warmup_steps=10_000, schedule="cosine", grad_clip=0.5, ema=0.9999), 1_000_000,
                  {"model.dropout": 0.0, "sample.cfg_scale": 2.5}),
    "consistency": (OptimConfig(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.03, wd_exclude="pos_cls",
                                warmup_steps=10_000, schedule="steps", milestones=(400_000, 500_000),
                                factors=(0.3, 0.08), grad_clip=0.0, ema=0.9999), 1_000_000,
                    {"model.dropout": 0.5, "sample.cfg_scale": 1.0}),
}


def apply_stage_recipe(cfg: Config, stage: str, steps: int | None = None) -> Config:
    """The optimiser/training recipe of each stage at paper scale (METHOD.md §3, §4, §5).

    With `steps`, the run's length changes and the schedule keeps its shape: the consistency milestones and ECT
    stage length stay at the paper's fractions of the run (40 %, 50 %, 10 %), the 10k-step warm-up and the
    checkpoint/sample intervals are capped at a tenth of it.
    """
    optim, cfg.train.steps, extra = PAPER_RECIPES[stage]
    cfg.stage, cfg.optim, cfg.train.global_batch = stage, copy.deepcopy(optim), 1024
    apply_overrides(cfg, extra)
    if stage_of(stage).generates:
        cfg.sample.sampler = stage_of(stage).sampler
    if steps is not None and steps != cfg.train.steps:
        full, cfg.train.steps = cfg.train.steps, steps
        cfg.optim.milestones = tuple(round(m * steps / full) for m in cfg.optim.milestones)
        cfg.consistency.stage_length = max(round(cfg.consistency.stage_length * steps / full), 1)
        tenth = max(steps // 10, 1)
        cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, tenth)
        cfg.train.ckpt_every = min(cfg.train.ckpt_every, tenth)
        cfg.train.sample_every = min(cfg.train.sample_every, tenth)
    return cfg


def _paper(model: ModelConfig, default_stage: str, cfg_scale: float | None = None) -> Builder:
    def build(stage: str | None = None, steps: int | None = None) -> Config:
        cfg = _paper_common(Config(model=copy.deepcopy(model)))
        cfg = apply_stage_recipe(cfg, stage or default_stage, steps)
        if cfg_scale is not None and cfg.sample.cfg_scale != 1.0:  # the guided (diffusion) stage
            cfg.sample.cfg_scale = cfg_scale
        return cfg
    return build


# stage → what the CPU recipe of an n-step run changes in the paper's (comments: the measurement behind each)
CPU_RECIPES: dict[str, Callable[[int], dict]] = {
    # Measured by benchmarks/stage1_recipe.py (k-NN of LN(CLS) at σ_min after the same images, one change at a
    # time; results/stage1_recipe.md): in a run of about one epoch more updates beat more negatives (batch 64 >
    # 128 > 256); an 8 % crop of a 32-pixel garment is a few pixels wide and crops from 60 % of the image up probe
    # best; blur and solarize cost time and accuracy on 1-channel 32-pixel images, while brightness/contrast
    # jitter stands in for the colour jitter that is a no-op there.
    "pretrain": lambda n: {"train.global_batch": 64, "optim.lr": 1e-3, "train.knn_every": n // 2,
                           "pretrain.crop_min_scale": 0.6, "pretrain.grey_jitter_p": 0.8, "pretrain.blur_p1": 0.0,
                           "pretrain.blur_p2": 0.0, "pretrain.solarize_p2": 0.0},
    "diffusion": lambda n: {
        # lr 1e-3 over 5e-4: lower FID at every paired seed, pre-trained and scratch alike (FID @ 1 000 steps
        # 115.0 / 109.1 / 114.2 vs 126.9 / 118.4 / 124.3 for seeds 0–2 from the stage-1 encoder, @ 2 000
        # 102.3 / 96.0 / 101.6 vs 109.0 / 102.5 / 104.6; from scratch, 3-seed means 115.1 vs 126.0 and 98.5 vs
        # 107.6); 2e-3 gave 115.9 @ 1 000 (the `lr1e-3` / `lr2e-3` variants in
        # benchmarks/results/pretrain_vs_scratch.md).
        "optim.lr": 1e-3, "optim.ema": 0.999,
        # Batch 32 over 64 at the same images (twice the steps): FID 94.4 [92.2–96.7] vs 100.0 [96.0–102.3] after
        # 128 000 images from the demo's stage-1 encoder (3 seeds; lower at 2 of 3 paired seeds; the `lr1e-3-b32`
        # variant of benchmarks/results/pretrain_vs_scratch.md). On 2 cores a batch-32 step costs 0.55× a batch-64
        # one, on 1 core 0.50× (benchmarks/results/batch_step_time*.md): about the same wall time.
        "train.global_batch": 32,
        # The paper's grid weight spans 1e4 between σ_min and σ_max, so at batch 64 each step's gradient is
        # set by its one or two lowest-σ samples and high noise is never learnt in thousands of steps (the
        # samples stay noise); plain x0 MSE learns every σ (benchmarks/results/weighting.md).
        "diffusion.weighting": "uniform",
        # More σ draws at high noise, where a tiny model decides the garment's outline (fewer broken shapes
        # than P_mean = −1.2 at the same budget: benchmarks/results/demo/).
        "diffusion.p_mean": -0.6},
    # At σ_max the CM target is the model's own output at r ≈ t/2, so the 1-step map only improves as
    # fast as information from low noise climbs that chain. With the paper's recipe (lr 2e-4, stages of
    # n/8 steps) 1 000 steps left the 1-step samples as noisy 4×4-patch silhouettes; lr 2e-3 and staying
    # in ECT stage 1 (the largest t − r) make most classes recognisable. Weight 1 instead of 1/(t' − r')
    # (≈ 1/t at low noise, like the diffusion grid weight) made no measurable difference at lr 2e-4; it
    # is kept for consistency with the diffusion recipe (benchmarks/results/consistency_recipe.md).
    # No auxiliary InfoNCE (METHOD.md §5 has weight 1): from the demo's stage-1 encoder it costs 1-step FID
    # at every seed, 221.5 [217.8–224.3] vs 205.2 [193.8–214.6] at step 1 000 and 171.0 [162.9–180.9] vs
    # 153.4 [152.1–155.0] at 2 000 (3 seeds, ranges apart; the `noaux` variant of
    # benchmarks/results/pretrain_vs_scratch.md). `--consistency.aux_weight 1` restores it.
    "consistency": lambda n: {"optim.lr": 2e-3, "optim.ema": 0.999, "optim.milestones": (int(n * 0.8),),
                              "optim.factors": (0.3,), "consistency.weighting": "uniform",
                              "consistency.stage_length": n, "model.dropout": 0.1,
                              "consistency.aux_weight": 0.0},
}


def _cpu(enc_depth: int, width: int, heads: int, steps: dict[str, int]) -> Builder:
    """Fashion-MNIST padded to 32×32, patch 4 → 64 patches (+2 tokens); schedules sized for thousands of steps.

    The patch positions start from the 2-D sin-cos code: from trunc-normal(0.02) they stay ~1/40 of the patch
    tokens for hundreds of steps, a bag of patches (stage-1 k-NN after 200 steps 0.656 → 0.738, stage1_recipe.md)."""

    def build(stage: str | None = None, run_steps: int | None = None) -> Config:
        stage = stage or "diffusion"
        cfg = Config(model=ModelConfig(img_size=32, channels=1, patch=4, enc_depth=enc_depth, enc_width=width,
                                       enc_heads=heads, dec_width=width, dec_heads=heads, num_classes=10,
                                       proj_hidden=4 * width, proj_out=128, pos_init="sincos"))
        cfg = apply_stage_recipe(cfg, stage)
        n = run_steps or steps[stage]
        cfg.train.steps, cfg.train.global_batch = n, 64
        cfg.optim.warmup_steps = max(n // 20, 10)
        apply_overrides(cfg, CPU_RECIPES[stage](n))
        cfg.train.ckpt_every, cfg.train.log_every = max(n // 4, 1), 25
        return cfg
    return build


PAPER_MODELS = {
    "rcm-b-16-in256": (_in(256, 16, **ENC_B, dec_width=768, dec_heads=12), "pretrain", None),
    "rcm-l-16-in256": (_in(256, 16, **ENC_L, dec_width=1024, dec_heads=16), "pretrain", None),
    "rcm-l-32-in512": (_in(512, 32, **ENC_L, dec_width=1024, dec_heads=16), "pretrain", None),
    "epg-l-16-in256": (_in(256, 16, **ENC_L, dec_width=1024, dec_heads=16), "consistency", None),
    "epg-xl-16-in256": (_in(256, 16, **ENC_B, dec_width=1584, dec_heads=22), "diffusion", 2.5),
    "epg-xxl-16-in256": (_in(256, 16, **ENC_B, dec_width=1920, dec_heads=16), "diffusion", 2.5),
    "epg-g-16-in256": (_in(256, 16, **ENC_B, dec_width=2688, dec_heads=21), "diffusion", 2.5),
    "epg-l-32-in512": (_in(512, 32, **ENC_L, dec_width=1024, dec_heads=16), "diffusion", 3.2),
}

PRESETS: dict[str, Builder] = {name: _paper(*row) for name, row in PAPER_MODELS.items()}
PRESETS["fmnist-tiny"] = _cpu(4, 128, 4, {"pretrain": 1500, "diffusion": 4000, "consistency": 1500})
PRESETS["fmnist-small"] = _cpu(6, 256, 4, {"pretrain": 3000, "diffusion": 12000, "consistency": 6000})


def get_preset(name: str, stage: str | None = None, overrides: dict | None = None) -> Config:
    """Build a preset by name for a stage (default: the preset's own), then apply overrides."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint} (`epg presets` lists them)")
    overrides = overrides or {}
    cfg = PRESETS[name](stage, _run_steps(overrides))
    cfg.preset = name
    return apply_overrides(cfg, overrides)


def _run_steps(overrides: dict) -> int | None:
    """The run length an override sets (`--steps` / `--train.steps`), so that derived fields can follow it."""
    for key, value in overrides.items():
        if ALIASES.get(key.replace("-", "_"), key.replace("-", "_")) == "train.steps":
            try:
                steps = int(float(value))
            except (TypeError, ValueError):
                return None  # apply_overrides names the bad value
            return steps if steps > 0 else None
    return None
