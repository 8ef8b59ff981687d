"""The one training loop behind every stage: DDP, gradient accumulation, bf16, EMA, exact resume."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from epg.config import Config, ConfigError
from epg.data import open_dataset
from epg.data.sampler import GlobalBatchSampler
from epg.engine import checkpoint as ck
from epg.engine import resume, rundir
from epg.engine.distributed import DistEnv, all_reduce_mean, barrier, init_distributed
from epg.engine.health import Health, NonFiniteLossError
from epg.engine.rng import SampleRNG, mix_seed
from epg.engine.runlog import LogWindow, RunLogger
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


def _ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the main process, which finishes the step and checkpoints; a
    signal sent to the whole process group (timeout, Slurm, systemd) would otherwise kill them first."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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


class Trainer:
    """Train `cfg` in `run_dir`; re-running the same command resumes from the newest good checkpoint."""

    def __init__(self, cfg: Config, run_dir: str | Path, env: DistEnv | None = None, dataset: Dataset | None = None,
                 restart: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.env = env or init_distributed(cfg.train.device)
        self._check_batches()
        self.dataset = dataset if dataset is not None else open_dataset(
            cfg.data.source, cfg.data.split, resolution=cfg.model.img_size)
        self._check_data()
        if cfg.train.fsdp and cfg.stage == "pretrain":
            raise ConfigError("train.fsdp shards the stage-2 generator; stage 1 (at most 227M parameters) uses DDP")
        self.ckpt_root = self.run_dir / "checkpoints"
        self.restarted = restart
        self._lock = resume.open_run_dir(self.run_dir, cfg, restart) if self.env.is_main else None
        try:
            barrier()
            candidates = resume.Candidates(self.ckpt_root, cfg)
            found = iter(candidates)
            first = next(found, None)
            if first is None:
                candidates.refuse()
            self._build(ck.read_state_meta(first) if first is not None else None)
            if first is not None:
                self._resume(first, found, candidates)
        except BaseException:
            self.close()
            raise
        ddp = self.env.world > 1 and not self.fsdp
        self.model = DistributedDataParallel(self.objective, broadcast_buffers=False) if ddp else self.objective
        # Under torchrun every rank must stop at the same step: the stop request is shared over a CPU group.
        self._control = dist.new_group(backend="gloo") if self.env.world > 1 else None

    def _check_batches(self) -> None:
        t = self.cfg.train
        if t.global_batch % self.env.world:
            raise ConfigError(f"train.global_batch {t.global_batch} is not divisible by {self.env.world} processes")
        self.local_batch = t.global_batch // self.env.world
        self.micro = t.micro_batch or self.local_batch
        if self.local_batch % self.micro:
            raise ConfigError(f"per-process batch {self.local_batch} is not divisible by "
                              f"train.micro_batch {self.micro}")
        self.accum = self.local_batch // self.micro

    def _check_data(self) -> None:
        cfg = self.cfg
        if getattr(self.dataset, "channels", cfg.model.channels) != cfg.model.channels:
            raise ConfigError(f"the data has {self.dataset.channels} channels but model.channels is "
                              f"{cfg.model.channels}; set --model.channels {self.dataset.channels}")
        data_classes = getattr(self.dataset, "num_classes", 0)
        if cfg.model.num_classes and data_classes > cfg.model.num_classes:
            raise ConfigError(f"the data has {data_classes} classes but model.num_classes is {cfg.model.num_classes}; "
                              f"set --model.num_classes {data_classes} (or 0 for an unconditional model)")

    def _build(self, resume_meta: dict | None) -> None:
        """Network, EMA, optimizer; from `--init` for a new run, shaped for the checkpoint when resuming."""
        cfg = self.cfg
        torch.manual_seed(mix_seed(cfg.train.seed, "init"))  # same initial weights on every rank and rerun
        self.objective = build_objective(cfg, self.env.device, verbose=self.env.is_main,
                                         resume_meta=resume_meta).to(self.env.device)
        self.net = self.objective.net
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
        self._log_state: dict = {}
        self._stop_signal = False

    def close(self) -> None:
        """Release the run directory (done by `fit` on return; call it for a Trainer that is not fitted)."""
        if self._lock is not None:
            rundir.release(self._lock)
            self._lock = None

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
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                    "log": self._log_state, **self.objective.extra_meta()}
            path = self._write(tensors, meta)
        barrier()
        self.last_checkpoint = ck.newest_valid_checkpoint(self.ckpt_root, self.cfg) if path is None else path
        return self.last_checkpoint

    def _write(self, tensors: dict[str, dict[str, torch.Tensor]], meta: dict) -> Path:
        bad = ck.first_non_finite(tensors)
        if bad is not None:  # the weights diverged although every loss was finite: keep the last good state
            raise NonFiniteLossError(f"{bad} is not finite at step {self.step}, so no checkpoint was written; "
                                     f"{self._last_good()}. Lower optim.lr or use train.precision fp32")
        target = self.ckpt_root / f"step-{self.step:08d}"
        try:
            path = ck.write_checkpoint(target, self.cfg, tensors, meta)
        except ck.CheckpointError as e:
            raise ck.CheckpointError(f"{e}; {self._last_good()}; rerun the same command to resume") from None
        t = self.cfg.train
        ck.prune_checkpoints(self.ckpt_root, t.keep_last, t.keep_every, self.cfg, newest=path)
        return path

    def _last_good(self) -> str:
        return f"the last good checkpoint is {self.last_checkpoint or 'none (no checkpoint yet)'}"

    def _resume(self, first: Path, rest: Iterator[Path], candidates: resume.Candidates) -> None:
        """Load the newest good checkpoint; one that fails to load (NaN weights, …) falls back to the next."""
        for path in (first, *rest):
            try:
                self._load(path)
                if self.env.is_main:
                    print(f"epg: resumed from step {self.step} (checkpoint {path})", flush=True)
                return
            except ck.CheckpointError as e:
                candidates.skip(path, e)
        candidates.refuse()

    def _load(self, path: Path) -> None:
        load_model_state(self.net, ck.read_tensors(path, "model"), f"{path}/model.safetensors")
        meta = ck.read_state_meta(path)
        state = ck.read_tensors(path, "state")
        load_optimizer_state(self.net, self.opt, state, meta["optimizer"])
        self.objective.load_extra_state({k[6:]: v for k, v in state.items() if k.startswith("extra.")})
        if self.ema is not None:
            ema = ck.read_tensors(path, "ema")
            self.ema = [like_parameter(p, ema[n]) for n, p in zip(self.trained_names, self.trained)]
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.step = meta["step"]
        self._log_state = meta.get("log", {})
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

    def _grad_norm(self) -> torch.Tensor:
        """The total gradient norm after unscaling (fp16), clipping it when the recipe asks."""
        cfg = self.cfg
        self.scaler.unscale_(self.opt)
        if cfg.optim.grad_clip > 0 and self.step >= cfg.optim.warmup_steps:
            norm = torch.nn.utils.clip_grad_norm_(self.trained, cfg.optim.grad_clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.trained if p.grad is not None], foreach=True)
        return full_tensor(norm)

    def _apply_update(self, loss_ok: torch.Tensor) -> torch.Tensor:
        """Step the optimizer, EMA and objective; returns whether the gradients were finite. In skip mode a step
        with a non-finite loss or gradient changes nothing (under fp16 the scaler already skips inf gradients)."""
        cfg = self.cfg
        grad_ok = torch.isfinite(self._grad_norm()) | self.scaler.is_enabled()
        if cfg.train.nonfinite == "skip":
            ok = all_reduce_mean((loss_ok & grad_ok).float()) == 1  # every rank skips the same steps
            if not bool(ok):  # host sync: only in skip mode, by design
                self.opt.zero_grad(set_to_none=True)
                if self.scaler.is_enabled():
                    self.scaler.update()
                return grad_ok
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            ema_update(self.ema, self.trained, ema_decay(self.step, cfg.optim))
        self.objective.after_optimizer_step(self.step)
        return grad_ok

    # ---------------------------------------------------------------- the loop
    def _on_sigterm(self, *_: object) -> None:
        self._stop_signal = True

    def _stop_requested(self) -> bool:
        """Whether any rank got SIGTERM: all ranks then checkpoint at the same step (a CPU all-reduce, no sync)."""
        if self._control is None:
            return self._stop_signal
        flag = torch.tensor([int(self._stop_signal)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._control)
        return bool(flag)

    def _loader(self) -> DataLoader:
        cfg, env = self.cfg, self.env
        sampler = GlobalBatchSampler(len(self.dataset), cfg.train.global_batch, env.rank, env.world, self.micro,
                                     cfg.train.seed, self.step, cfg.train.steps)
        return DataLoader(_Positioned(self.dataset), batch_sampler=sampler, num_workers=cfg.data.workers,
                          pin_memory=env.device.type == "cuda", persistent_workers=False,
                          worker_init_fn=_ignore_sigterm if cfg.data.workers else None)

    def fit(self, hooks: list | None = None) -> TrainResult:
        """Train to `train.steps`; `hooks` are callables (trainer, step) → dict, called after every step."""
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        logger = RunLogger(self.run_dir, self.env.is_main, self.step, self.cfg.train.steps,
                           self.cfg.train.global_batch, restart=self.restarted)
        try:
            stopped = self._loop(hooks or [], logger)
        finally:
            logger.close()
            signal.signal(signal.SIGTERM, previous)
            self.close()
        return TrainResult(self.run_dir, self.step, self.last_checkpoint, stopped)

    def _loop(self, hooks: list, logger: RunLogger) -> bool:
        cfg, total_steps = self.cfg, self.cfg.train.steps
        health = Health(self.env.device, self._log_state.get("skipped", 0.0))
        window = LogWindow(self.step, self._log_state, self.env.device)
        it = iter(self._loader())
        while self.step < total_steps:
            loss, terms = self._train_step([next(it) for _ in range(self.accum)])
            loss_ok = torch.isfinite(torch.stack([loss, *terms.values()]))
            grad_ok = self._apply_update(loss_ok.all())
            health.record(self.step, torch.cat([loss_ok, grad_ok.view(1)]))
            window.add({"loss": loss, **terms})
            self.step += 1
            logger.advance()
            stop = self._stop_requested()
            at_log = self.step % cfg.train.log_every == 0 or self.step == total_steps
            at_ckpt = self.step % cfg.train.ckpt_every == 0 or self.step == total_steps or stop
            if at_log or at_ckpt:
                self._check_finite(health, ["loss", *terms, "gradients"])
            extra: dict[str, float] = {}
            for hook in hooks:  # each decides whether its own step has come (not only on log steps)
                extra.update(hook(self, self.step) or {})
            if at_log:
                self._log(logger, window.close(self.step, cfg.train.global_batch), health, extra)
            elif extra:
                logger.log(self.step, extra)
            if at_ckpt:
                # What the next log line averages over travels with the checkpoint, so a resume logs it exactly.
                self._log_state = {**window.state(), "skipped": float(health.skipped)}
                self.save_checkpoint()
            if stop:
                logger.message(f"SIGTERM: saved {self.last_checkpoint}; rerun the same command to resume")
                return True
        return False

    def _log(self, logger: RunLogger, means: dict[str, float], health: Health, extra: dict[str, float]) -> None:
        means = {k: float(all_reduce_mean(torch.as_tensor(v))) if k != "img_per_s" else v for k, v in means.items()}
        means.update(lr=self.opt.param_groups[0]["lr"], skipped_steps=float(health.skipped), **extra)
        logger.log(self.step, means)

    def _check_finite(self, health: Health, names: list[str]) -> None:
        bad_step = int(health.first_bad)
        if bad_step < 0 or self.cfg.train.nonfinite == "skip" or health.mask is None:
            return
        which = ", ".join(n for n, bad in zip(names, health.mask.tolist()) if bad)
        what = "gradients" if which == "gradients" else "loss"
        self._set_aside_diverged(bad_step)
        raise NonFiniteLossError(
            f"non-finite {what} at step {bad_step} (term: {which}); {self._last_good()}. Lower optim.lr, use "
            "train.precision fp32, or set train.nonfinite=skip to skip such steps")


    def _set_aside_diverged(self, bad_step: int) -> None:
        """A checkpoint of step ≥ `bad_step` holds the very weights that gave the non-finite step (finite but
        diverged): rename it ``diverged-…`` (kept, never resumed) so the named last good checkpoint really is."""
        path = self.last_checkpoint
        if path is None or ck.checkpoint_step(path) < bad_step:
            return
        if self.env.is_main:
            path.rename(path.with_name(f"diverged-{path.name}"))
        self.last_checkpoint = ck.newest_valid_checkpoint(self.ckpt_root, self.cfg)
