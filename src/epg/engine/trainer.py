"""The one training loop behind every stage: DDP, gradient accumulation, bf16, EMA, exact resume."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from epg.config import Config, ConfigError, config_from_dict
from epg.data import open_dataset
from epg.data.sampler import GlobalBatchSampler
from epg.engine import checkpoint as ck
from epg.engine.distributed import DistEnv, all_reduce_mean, barrier, init_distributed
from epg.engine.rng import SampleRNG, mix_seed
from epg.engine.runlog import RunLogger
from epg.engine.schedule import ema_decay, ema_update, learning_rate
from epg.engine.state import (
    full_tensor,
    like_parameter,
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
    shard_with_fsdp,
)
from epg.nn import set_activation_checkpointing
from epg.objectives import build_objective

# Fields whose change makes a run directory's checkpoints unusable for this command.
_IDENTITY = ("stage", "model", "noise")


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf: the message names the step, the loss term and the last good checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    stopped_by_signal: bool = False


class _Positioned(Dataset):
    """Dataset view that takes (index, stream position) pairs and returns the position with the sample."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        image, label = self.base[item[0]]
        return image, label, item[1]


def _param_groups(net: nn.Module, cfg: Config) -> list[dict]:
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        excluded = cfg.optim.wd_exclude == "pos_cls" and name.split(".")[-1] in ("pos_embed", "cls_token")
        (no_decay if excluded else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _identity_diffs(old: Config, new: Config) -> list[str]:
    """Differences in the fields that define which model a run trains."""
    a, b = old.to_dict(), new.to_dict()
    diffs = []
    for sec in _IDENTITY:
        if isinstance(a[sec], dict):
            diffs += [f"{sec}.{k}: {a[sec][k]!r} → {b[sec].get(k)!r}" for k in a[sec] if a[sec][k] != b[sec].get(k)]
        elif a[sec] != b[sec]:
            diffs.append(f"{sec}: {a[sec]!r} → {b[sec]!r}")
    return diffs


def _check_run_config(run_dir: Path, cfg: Config) -> None:
    """A run directory belongs to one model: refuse to resume it with another."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    diffs = _identity_diffs(config_from_dict(json.loads(path.read_text())), cfg)
    if diffs:
        raise ConfigError(f"{run_dir} holds a run of another model ({'; '.join(diffs[:4])}); "
                          "use a new --run-dir or the original settings")


class Trainer:
    """Train `cfg` in `run_dir`; re-running the same command resumes from the newest good checkpoint."""

    def __init__(self, cfg: Config, run_dir: str | Path, env: DistEnv | None = None, dataset: Dataset | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.env = env or init_distributed(cfg.train.device)
        t = cfg.train
        if t.global_batch % self.env.world:
            raise ConfigError(f"train.global_batch {t.global_batch} is not divisible by {self.env.world} processes")
        self.local_batch = t.global_batch // self.env.world
        self.micro = t.micro_batch or self.local_batch
        if self.local_batch % self.micro:
            raise ConfigError(f"per-process batch {self.local_batch} is not divisible by "
                              f"train.micro_batch {self.micro}")
        self.accum = self.local_batch // self.micro
        self.dataset = dataset if dataset is not None else open_dataset(
            cfg.data.source, cfg.data.split, resolution=cfg.model.img_size)
        if getattr(self.dataset, "channels", cfg.model.channels) != cfg.model.channels:
            raise ConfigError(f"the data has {self.dataset.channels} channels but model.channels is "
                              f"{cfg.model.channels}")
        data_classes = getattr(self.dataset, "num_classes", 0)
        if cfg.model.num_classes and data_classes > cfg.model.num_classes:
            raise ConfigError(f"the data has {data_classes} classes but model.num_classes is {cfg.model.num_classes}; "
                              f"set --model.num_classes {data_classes} (or 0 for an unconditional model)")
        self.ckpt_root = self.run_dir / "checkpoints"
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _check_run_config(self.run_dir, cfg)
            (self.run_dir / "config.json").write_text(cfg.to_json())
        barrier()
        torch.manual_seed(mix_seed(cfg.train.seed, "init"))  # same initial weights on every rank and rerun
        self.objective = build_objective(cfg, self.env.device, verbose=self.env.is_main).to(self.env.device)
        self.net = self.objective.net
        if cfg.train.fsdp and cfg.stage == "pretrain":
            raise ConfigError("train.fsdp shards the stage-2 generator; stage 1 (at most 227M parameters) uses DDP")
        self.fsdp = cfg.train.fsdp and self.env.world > 1
        if cfg.train.activation_checkpointing:
            set_activation_checkpointing(self.net, True)
        if self.fsdp:
            shard_with_fsdp(self.net)
        if cfg.train.compile:
            self.net.compile()
        self.trained_names = [n for n, p in self.net.named_parameters() if p.requires_grad]
        self.trained = [p for p in self.net.parameters() if p.requires_grad]
        self.ema = [p.detach().clone().float() for p in self.trained] if cfg.optim.ema > 0 else None
        # The fused AdamW kernel on every device: on CPU it took 0.37x the time of the per-tensor loop at
        # fmnist-tiny and 0.21x at B size (foreach was slower still), agreeing with it to 1 ulp
        # (tests/test_performance.py).
        self.opt = torch.optim.AdamW(_param_groups(self.net, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                     eps=cfg.optim.eps, fused=True)
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=cfg.train.precision == "fp16")
        self.step = 0
        self.last_checkpoint: Path | None = None
        self._stop_signal = False
        self._resume()
        ddp = self.env.world > 1 and not self.fsdp
        self.model = DistributedDataParallel(self.objective, broadcast_buffers=False) if ddp else self.objective

    # ---------------------------------------------------------------- checkpoints
    def ema_state(self) -> dict[str, torch.Tensor]:
        """Full EMA weights as a state dict of the trained network (buffers from the online net).

        Every rank must call it (it gathers shards under FSDP); the result is complete on rank 0.
        """
        state = model_state(self.net)
        if self.ema is not None:
            full = [full_tensor(e).cpu() for e in self.ema]
            if state:
                state.update(zip(self.trained_names, full))
        return state

    def save_checkpoint(self) -> Path | None:
        """Gather the full state on every rank, write it atomically from rank 0, prune old checkpoints."""
        model = model_state(self.net)
        opt_tensors, opt_meta = optimizer_state(self.net, self.opt)
        ema = self.ema_state() if self.ema is not None else None
        path = None
        if self.env.is_main:
            extra = {f"extra.{k}": v for k, v in self.objective.extra_state().items()}
            tensors = {"model": model, "state": {**opt_tensors, **extra}}
            if ema is not None:
                tensors["ema"] = ema
            meta = {"step": self.step, "images": self.step * self.cfg.train.global_batch, "optimizer": opt_meta,
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}}
            path = ck.write_checkpoint(self.ckpt_root / f"step-{self.step:08d}", self.cfg, tensors, meta)
            ck.prune_checkpoints(self.ckpt_root, self.cfg.train.keep_last, self.cfg.train.keep_every)
        barrier()
        self.last_checkpoint = ck.newest_valid_checkpoint(self.ckpt_root) if path is None else path
        return self.last_checkpoint

    def _resume(self) -> None:
        path = ck.newest_valid_checkpoint(self.ckpt_root)
        if path is None:
            return
        diffs = _identity_diffs(ck.read_config(path), self.cfg)
        if diffs:
            raise ck.CheckpointError(f"{path} was written for another model: {'; '.join(diffs[:4])}")
        load_model_state(self.net, ck.read_tensors(path, "model"), f"{path}/model.safetensors")
        meta = json.loads((path / "state.json").read_text())
        state = ck.read_tensors(path, "state")
        load_optimizer_state(self.net, self.opt, state, meta["optimizer"])
        self.objective.load_extra_state({k[6:]: v for k, v in state.items() if k.startswith("extra.")})
        if self.ema is not None:
            ema = ck.read_tensors(path, "ema")
            self.ema = [like_parameter(p, ema[n]) for n, p in zip(self.trained_names, self.trained)]
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.step = meta["step"]
        self.last_checkpoint = path

    # ---------------------------------------------------------------- the step
    def _autocast(self) -> contextlib.AbstractContextManager:
        p = self.cfg.train.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def _train_step(self, batches: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = learning_rate(self.step, cfg.optim, cfg.train.steps)
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.env.device)
        terms: dict[str, torch.Tensor] = {}
        for i, (images, labels, positions) in enumerate(batches):
            torch.manual_seed(mix_seed(cfg.train.seed, self.step, self.env.rank, i, "torch-global"))
            rng = SampleRNG(cfg.train.seed, self.step, positions, self.env.device)
            images = images.to(self.env.device, non_blocking=True)
            labels = labels.to(self.env.device, non_blocking=True)
            sync = i == len(batches) - 1 or self.env.world == 1
            if self.fsdp:
                self.net.set_requires_gradient_sync(sync)
            ctx = contextlib.nullcontext() if sync or self.fsdp else self.model.no_sync()
            with ctx:
                with self._autocast():
                    loss, parts = self.model(images, labels, rng, self.step)
                self.scaler.scale(loss * (images.shape[0] / self.local_batch)).backward()
            total += loss.detach() * (images.shape[0] / self.local_batch)
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v.detach().float() * (images.shape[0] / self.local_batch)
        return total, terms

    def _apply_update(self, finite: torch.Tensor) -> None:
        cfg = self.cfg
        if cfg.train.nonfinite == "skip" and not bool(finite):  # host sync: only in skip mode, by design
            self.opt.zero_grad(set_to_none=True)
            return
        self.scaler.unscale_(self.opt)
        if cfg.optim.grad_clip > 0 and self.step >= cfg.optim.warmup_steps:
            torch.nn.utils.clip_grad_norm_(self.trained, cfg.optim.grad_clip, foreach=True)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            ema_update(self.ema, self.trained, ema_decay(self.step, cfg.optim))
        self.objective.after_optimizer_step(self.step)

    # ---------------------------------------------------------------- the loop
    def _on_sigterm(self, *_: object) -> None:
        self._stop_signal = True

    def fit(self, hooks: list | None = None) -> TrainResult:
        """Train to `train.steps`; `hooks` are callables (trainer, step) → dict run at log steps."""
        cfg, env = self.cfg, self.env
        total_steps = cfg.train.steps
        sampler = GlobalBatchSampler(len(self.dataset), cfg.train.global_batch, env.rank, env.world, self.micro,
                                     cfg.train.seed, self.step, total_steps)
        loader = DataLoader(_Positioned(self.dataset), batch_sampler=sampler, num_workers=cfg.data.workers,
                            pin_memory=env.device.type == "cuda", persistent_workers=False)
        logger = RunLogger(self.run_dir, env.is_main, self.step, total_steps, cfg.train.global_batch)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if env.is_main or env.world > 1 else None
        it = iter(loader)
        sums: dict[str, torch.Tensor] = {}
        # Non-finite losses are recorded on the device and checked at log/checkpoint steps only, so the
        # hot loop has no host sync; no checkpoint is ever written from non-finite weights.
        first_bad = torch.full((), -1, dtype=torch.long, device=env.device)
        bad_mask: torch.Tensor | None = None
        skipped = torch.zeros((), device=env.device)
        t0, n0 = time.perf_counter(), self.step
        stopped = False
        try:
            while self.step < total_steps:
                batches = [next(it) for _ in range(self.accum)]
                loss, terms = self._train_step(batches)
                names = ["loss", *terms]
                term_ok = torch.isfinite(torch.stack([loss, *terms.values()]))
                finite = term_ok.all()
                newly_bad = (first_bad < 0) & ~finite
                bad_mask = ~term_ok if bad_mask is None else torch.where(newly_bad, ~term_ok, bad_mask)
                first_bad = torch.where(newly_bad, torch.full_like(first_bad, self.step), first_bad)
                skipped += (~finite).float()
                self._apply_update(finite)
                for k, v in (("loss", loss), *terms.items()):
                    sums[k] = sums.get(k, 0.0) + v
                self.step += 1
                logger.advance()
                at_log = self.step % cfg.train.log_every == 0 or self.step == total_steps
                at_ckpt = self.step % cfg.train.ckpt_every == 0 or self.step == total_steps
                if at_log or at_ckpt or self._stop_signal:
                    self._check_finite(first_bad, bad_mask, names)
                if at_log:
                    n = self.step - n0
                    means = {k: float(all_reduce_mean(v / n)) for k, v in sums.items()}
                    elapsed = time.perf_counter() - t0
                    means.update(lr=self.opt.param_groups[0]["lr"], skipped_steps=float(skipped),
                                 img_per_s=n * cfg.train.global_batch / max(elapsed, 1e-9))
                    for hook in hooks or []:
                        means.update(hook(self, self.step) or {})
                    logger.log(self.step, means)
                    sums, t0, n0 = {}, time.perf_counter(), self.step
                if at_ckpt or self._stop_signal:
                    self.save_checkpoint()
                if self._stop_signal:
                    stopped = True
                    logger.message(f"SIGTERM: saved {self.last_checkpoint}; rerun the same command to resume")
                    break
        finally:
            logger.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return TrainResult(self.run_dir, self.step, self.last_checkpoint, stopped)

    def _check_finite(self, first_bad: torch.Tensor, bad_mask: torch.Tensor | None, names: list[str]) -> None:
        bad_step = int(first_bad)
        if bad_step < 0 or self.cfg.train.nonfinite == "skip" or bad_mask is None:
            return
        which = ", ".join(n for n, bad in zip(names, bad_mask.tolist()) if bad)
        raise NonFiniteLossError(
            f"non-finite loss at step {bad_step} (term: {which}); the last good checkpoint is "
            f"{self.last_checkpoint or 'none (no checkpoint yet)'}. Lower optim.lr, use train.precision fp32, "
            "or set train.nonfinite=skip to skip such steps")
