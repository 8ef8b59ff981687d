"""The run configuration: dataclasses, command-line overrides with suggestions, JSON round-trip."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

STAGES = ("pretrain", "diffusion", "consistency")
# Short names for the overrides used most; every other leaf name works when it is unique.
ALIASES = {"steps": "train.steps", "batch": "train.global_batch", "seed": "train.seed"}
# Fields whose change makes a run directory's checkpoints unusable for a command.
IDENTITY = ("stage", "model", "noise")


def resolution_shift(img_size: int) -> float:
    """Default resolution shift s = H/64 (METHOD.md §1)."""
    return img_size / 64.0


class ConfigError(ValueError):
    """A user-facing configuration problem (unknown key, bad value)."""


@dataclass
class ModelConfig:
    img_size: int = 32
    channels: int = 1
    patch: int = 4
    enc_depth: int = 4
    enc_width: int = 128
    enc_heads: int = 4
    dec_width: int = 128  # the decoder has the encoder's depth (METHOD.md §2)
    dec_heads: int = 4
    num_classes: int = 10  # 0 = unconditional
    dropout: float = 0.0  # decoder attention-output dropout (CM)
    proj_hidden: int = 4096
    proj_out: int = 256
    mlp_ratio: float = 4.0
    pos_init: str = "normal"  # normal (METHOD.md §2) | sincos (the CPU presets; see nn/encoder.py)


@dataclass
class NoiseSettings:
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5
    shift: float = 0.0  # 0 = H/64 (METHOD.md §1)
    normalization: str = "minus_one"  # or "imagenet"


@dataclass
class DataConfig:
    source: str = "fmnist"  # fmnist | packed dir | image folder | .npz
    split: str = "train"
    eval_source: str = ""  # held-out data for k-NN / FID; "" = same source
    eval_split: str = "test"
    workers: int = 2
    hflip: bool = True


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    wd_exclude: str = "pos_cls"  # "none": decay every parameter (stage 1)
    warmup_steps: int = 10_000
    schedule: str = "cosine"  # cosine | steps | constant
    milestones: tuple[int, ...] = ()  # for "steps": lr × factors[i] from milestones[i]
    factors: tuple[float, ...] = ()
    grad_clip: float = 0.0  # 0 = off; applied after warm-up
    ema: float = 0.9999  # 0 = no EMA
    layer_decay: float = 1.0  # < 1: layer-wise lr decay of the encoder (stage 2; engine/setup.py); 1 = off
    ema_warmup: bool = True  # decay min(ema, (1 + step)/(10 + step)): early weights do not linger in short runs


@dataclass
class TrainConfig:
    steps: int = 1000
    global_batch: int = 64
    micro_batch: int = 0  # per-process batch per forward; 0 = global_batch / world_size
    seed: int = 0
    precision: str = "bf16"  # bf16 | fp16 | fp32
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = False
    init_from: str = ""  # stage-1 checkpoint for stage 2; "" = random encoder (scratch)
    ckpt_every: int = 500
    keep_last: int = 2
    keep_every: int = 0  # also keep every M-th step's checkpoint; 0 = none
    log_every: int = 50
    sample_every: int = 0
    fid_every: int = 0
    fid_num: int = 500
    knn_every: int = 0
    nonfinite: str = "stop"  # stop | skip
    device: str = "auto"


@dataclass
class PretrainConfig:
    tau_c: float = 0.2
    tau1: float = 0.1
    tau2_schedule: str = "cosine"  # cosine | constant
    tau2_constant: float = 0.1
    teacher_momentum: float = 0.99
    per_sample_index: bool = False
    consistency_features: str = "cls"  # cls | projector
    consistency_noise: str = "sample"  # sample (the paper: an ε per image) | batch (one ε shared by the batch)
    s0: int = 20
    s1: int = 1280
    blur_p1: float = 1.0
    blur_p2: float = 0.1
    solarize_p2: float = 0.2
    crop_min_scale: float = 0.08
    # Not in the paper (0 = off): brightness/contrast jitter of 1-channel views (the paper's colour jitter is a
    # no-op there) and random erasing, on both views (the CPU presets; benchmarks/results/stage1_recipe.md).
    grey_jitter_p: float = 0.0
    grey_strength: float = 0.4
    erase_p: float = 0.0
    # Weights of the two terms (the paper: 1 and 1); 0 skips that branch — the one-term ablations of the σ table
    # (consistency only leaves the projector unused: single-process, as DDP would need find_unused_parameters).
    contrastive_weight: float = 1.0
    consistency_weight: float = 1.0


@dataclass
class DiffusionConfig:
    p_mean: float = -1.2
    p_std: float = 1.6
    grid_points: int = 1280
    weighting: str = "grid"  # grid | edm | uniform (plain x0 MSE; the CPU presets, see presets.py)
    weight_cap: float = 0.0  # λ ← min(λ, weight_cap); 0 = no cap (not in the paper; measured in README)
    label_dropout: float = 0.1


@dataclass
class ConsistencyConfig:
    p_mean: float = -0.4
    p_std: float = 1.6
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    stage_length: int = 100_000
    huber_c: float = 0.06
    weighting: str = "ect"  # ect (1/(t' − r'), the paper) | uniform (1 where t' > r'; the CPU presets)
    aux_weight: float = 1.0
    aux_tau: float = 0.1
    aux_features: str = "projector"  # projector | cls


@dataclass
class SampleConfig:
    sampler: str = "heun"  # heun | euler | stochastic | consistency
    steps: int = 32
    grid: str = "edm"  # edm (final step to σ=0) | official
    cfg_scale: float = 1.0
    interval_lo: float = 0.19
    interval_hi: float = 1.61
    cm_sigmas: tuple[float, ...] = ()  # intermediate (unshifted) σ for multistep consistency sampling
    churn: float = 40.0  # the stochastic sampler's S_churn, S_tmin, S_tmax (unshifted) and S_noise (EDM Alg. 2)
    churn_tmin: float = 0.05
    churn_tmax: float = 50.0
    churn_noise: float = 1.003
    labels: str = "balanced"  # balanced | frequency
    seed: int = 0
    use_ema: bool = True


@dataclass
class Config:
    preset: str = "custom"
    stage: str = "pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    @property
    def sigma_shift(self) -> float:
        """The resolution shift s (METHOD.md §1)."""
        return self.noise.shift or resolution_shift(self.model.img_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _leaf_paths(obj: Any, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    out = {}
    for f in dataclasses.fields(obj):
        path = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaf_paths(value, path + "."))
        else:
            out[path] = (obj, f)
    return out


def _parse_value(text: Any, current: Any, key: str) -> Any:
    if not isinstance(text, str):
        return tuple(text) if isinstance(current, tuple) else text
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(current, tuple):
            items = [t for t in text.replace(" ", "").split(",") if t]
            kind = type(current[0]) if current else float
            return tuple(kind(t) for t in items)
        if isinstance(current, int):
            return int(float(text)) if float(text).is_integer() else int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"{key}: cannot read {text!r} as {type(current).__name__}") from None
    return text


def parse_overrides(rest: list[str]) -> dict[str, str]:
    """`--optim.lr 3e-4 --steps=100` → {"optim.lr": "3e-4", "steps": "100"}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}: overrides look like --key value")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(rest):
                raise ConfigError(f"--{key} needs a value")
            i += 1
            value = rest[i]
        out[key] = value
        i += 1
    return out


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Set dotted keys (``optim.lr``) or unique leaf names (``lr``); unknown keys suggest the closest one."""
    leaves = _leaf_paths(cfg)
    by_leaf: dict[str, list[str]] = {}
    for path in leaves:
        by_leaf.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    for raw_key, text in overrides.items():
        key = raw_key.replace("-", "_")
        key = ALIASES.get(key, key)
        if key not in leaves:
            candidates = by_leaf.get(key, [])
            if len(candidates) > 1:
                raise ConfigError(f"'{raw_key}' is ambiguous: use one of {', '.join(candidates)}")
            if not candidates:
                names = list(leaves) + list(by_leaf)
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"unknown config key '{raw_key}'{hint} (`epg config` lists every key)")
            key = candidates[0]
        owner, f = leaves[key]
        setattr(owner, f.name, _parse_value(text, getattr(owner, f.name), key))
    validate(cfg)
    return cfg


_CHOICES = {
    "stage": STAGES, "model.pos_init": ("normal", "sincos"), "noise.normalization": ("minus_one", "imagenet"),
    "optim.schedule": ("cosine", "steps", "constant"),
    "optim.wd_exclude": ("none", "pos_cls"), "train.precision": ("bf16", "fp16", "fp32"),
    "train.nonfinite": ("stop", "skip"), "pretrain.tau2_schedule": ("cosine", "constant"),
    "pretrain.consistency_features": ("cls", "projector"), "pretrain.consistency_noise": ("sample", "batch"),
    "diffusion.weighting": ("grid", "edm", "uniform"),
    "consistency.weighting": ("ect", "uniform"),
    "consistency.aux_features": ("projector", "cls"), "sample.sampler": ("heun", "euler", "stochastic", "consistency"),
    "sample.grid": ("edm", "official"), "sample.labels": ("balanced", "frequency"),
}


# Numeric keys with the range their value must lie in: (lowest, highest, whether the lowest is allowed).
_INF = float("inf")
_RANGES: dict[str, tuple[float, float, bool]] = {
    "train.steps": (0, _INF, False), "train.global_batch": (0, _INF, False), "train.micro_batch": (0, _INF, True),
    "train.ckpt_every": (0, _INF, False), "train.log_every": (0, _INF, False), "train.keep_last": (0, _INF, False),
    "train.keep_every": (0, _INF, True), "train.sample_every": (0, _INF, True), "train.fid_every": (0, _INF, True),
    "train.fid_num": (0, _INF, False), "train.knn_every": (0, _INF, True), "data.workers": (0, _INF, True),
    "optim.lr": (0, _INF, True), "optim.eps": (0, _INF, False), "optim.weight_decay": (0, _INF, True),
    "optim.warmup_steps": (0, _INF, True), "optim.grad_clip": (0, _INF, True), "optim.ema": (0, 1, True),
    "optim.layer_decay": (0, 1, False),
    "sample.steps": (0, _INF, False), "sample.cfg_scale": (0, _INF, True), "model.img_size": (0, _INF, False),
    "model.channels": (0, _INF, False), "model.patch": (0, _INF, False), "model.enc_depth": (0, _INF, False),
    "model.enc_width": (0, _INF, False), "model.enc_heads": (0, _INF, False), "model.dec_width": (0, _INF, False),
    "model.dec_heads": (0, _INF, False), "model.num_classes": (0, _INF, True), "model.dropout": (0, 1, True),
    "noise.sigma_min": (0, _INF, False), "noise.sigma_max": (0, _INF, False), "noise.sigma_data": (0, _INF, False),
    "diffusion.label_dropout": (0, 1, True), "diffusion.weight_cap": (0, _INF, True),
}
_HINTS = {"train.keep_last": " (the newest checkpoint is what a rerun resumes from)"}


def _check_range(key: str, value: float) -> None:
    lo, hi, lo_ok = _RANGES[key]
    if value != value or value in (_INF, -_INF) or value < lo or (value == lo and not lo_ok) or value > hi:
        bound = f"≥ {lo:g}" if lo_ok else f"> {lo:g}"
        if hi != _INF:
            bound += f" and ≤ {hi:g}"
        raise ConfigError(f"{key} = {value!r} must be a finite number {bound}{_HINTS.get(key, '')}")


def _check_device(device: str) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"train.device = {device!r} is not one of auto, cpu, cuda, cuda:N, mps")


def validate(cfg: Config) -> None:
    """Reject values that cannot work, naming the key: the one validation layer for config values."""
    flat = all_keys(cfg)
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{key} = {flat[key]!r} is not one of {', '.join(choices)}")
    for key in _RANGES:
        _check_range(key, flat[key])
    betas = cfg.optim.betas
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"optim.betas = {betas!r} must be two numbers in [0, 1), e.g. --optim.betas 0.9,0.999")
    _check_device(cfg.train.device)
    m = cfg.model
    if m.img_size % m.patch:
        raise ConfigError(f"model.img_size {m.img_size} is not a multiple of model.patch {m.patch}")
    for w, h, name in ((m.enc_width, m.enc_heads, "enc"), (m.dec_width, m.dec_heads, "dec")):
        if w % h:
            raise ConfigError(f"model.{name}_width {w} is not divisible by model.{name}_heads {h}")
    if len(cfg.optim.milestones) != len(cfg.optim.factors):
        raise ConfigError("optim.milestones and optim.factors must have the same length")


def identity_diffs(old: Config, new: Config) -> list[str]:
    """Differences in the fields that define which model a run trains (stage, model, noise)."""
    a, b = old.to_dict(), new.to_dict()
    diffs = []
    for sec in IDENTITY:
        if isinstance(a[sec], dict):
            diffs += [f"{sec}.{k}: {a[sec][k]!r} → {b[sec].get(k)!r}" for k in a[sec] if a[sec][k] != b[sec].get(k)]
        elif a[sec] != b[sec]:
            diffs.append(f"{sec}: {a[sec]!r} → {b[sec]!r}")
    return diffs


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from its JSON form; unknown keys are an error (a checkpoint of another version)."""
    cfg = Config()
    flat: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(data, "")
    leaves = _leaf_paths(cfg)
    unknown = [k for k in flat if k not in leaves]
    if unknown:
        raise ConfigError(f"config has unknown keys {unknown[:5]}: written by another version of epg?")
    return apply_overrides(cfg, flat)


def all_keys(cfg: Config) -> dict[str, Any]:
    """Every dotted key with its current value (for `epg config`)."""
    return {path: getattr(owner, f.name) for path, (owner, f) in _leaf_paths(cfg).items()}
