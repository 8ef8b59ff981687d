"""The one training loop behind every stage: DDP, gradient accumulation, bf16, EMA, exact resume."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from epg.config import Config
from epg.data import open_dataset
from epg.data.sampler import GlobalBatchSampler
from epg.dist import all_reduce_mean, barrier
from epg.engine import checkpoint as ck
from epg.engine import resume
from epg.engine.health import Health, NonFiniteLossError
from epg.engine.hooks import Hook, RunView
from epg.engine.model import TrainedModel
from epg.engine.runlog import LogWindow, RunLogger
from epg.engine.schedule import learning_rate
from epg.engine.setup import Batching, DistEnv, build_objective, check_run, init_distributed
from epg.nn import autocast
from epg.rng import SampleRNG, mix_seed

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer"]


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


class Trainer:
    """Train `cfg` in `run_dir`; re-running the same command resumes from the newest good checkpoint."""

    def __init__(self, cfg: Config, run_dir: str | Path, env: DistEnv | None = None, dataset: Dataset | None = None,
                 restart: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.env = env or init_distributed(cfg.train.device)
        self.batching = Batching.of(cfg, self.env)
        self.dataset = dataset if dataset is not None else open_dataset(
            cfg.data.source, cfg.data.split, resolution=cfg.model.img_size)
        check_run(cfg, self.dataset)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.restarted = restart
        self.step, self.last_checkpoint = 0, None
        self._log_state: dict = {}
        self._stop_signal = False
        self._lock = resume.open_run_dir(self.run_dir, cfg, restart) if self.env.is_main else None
        try:
            barrier()
            self._build_and_resume()
        except BaseException:
            self.close()
            raise
        self.model.wrap()
        # Under torchrun every rank must stop at the same step: the stop request is shared over a CPU group.
        self._control = dist.new_group(backend="gloo") if self.env.world > 1 else None
        self.view = RunView(cfg, self.run_dir, self.env, lambda: self.model.net, self.model.eval_network)

    def _build_and_resume(self) -> None:
        """The model from `--init` for a new run, shaped for and loaded from the newest good checkpoint else;
        one that fails to load (NaN weights, …) falls back to the next."""
        candidates = resume.Candidates(self.ckpt_root, self.cfg)
        found = iter(candidates)
        first = next(found, None)
        if first is None:
            candidates.refuse()
        torch.manual_seed(mix_seed(self.cfg.train.seed, "init"))  # same initial weights on every rank and rerun
        meta = ck.read_state_meta(first) if first is not None else None
        objective = build_objective(self.cfg, self.env.device, verbose=self.env.is_main, resume_meta=meta)
        self.model = TrainedModel(objective, self.cfg, self.env)
        if first is None:
            return
        for path in (first, *found):
            try:
                meta = self.model.load(path)
            except ck.CheckpointError as e:
                candidates.skip(path, e)
                continue
            self.step, self._log_state, self.last_checkpoint = meta["step"], meta.get("log", {}), path
            if self.env.is_main:
                print(f"epg: resumed from step {self.step} (checkpoint {path})", flush=True)
            return
        candidates.refuse()

    def close(self) -> None:
        """Release the run directory (done by `fit` on return; call it for a Trainer that is not fitted)."""
        if self._lock is not None:
            resume.release(self._lock)
            self._lock = None

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path | None:
        """Gather the full state on every rank, write it atomically from rank 0, prune old checkpoints."""
        tensors, meta = self.model.state()
        path = None
        if self.env.is_main:
            meta = {"step": self.step, "images": self.step * self.cfg.train.global_batch, **meta,
                    "log": self._log_state}
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

    # ---------------------------------------------------------------- the step
    def train_step(self, batches: list) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One optimizer step over the micro-batches: (loss, its terms, whether the gradients were finite).

        Under train.nonfinite=skip a step with a non-finite loss or gradient changes nothing (under fp16 the
        scaler already skips inf gradients)."""
        cfg, model, local = self.cfg, self.model, self.batching.local
        lr = learning_rate(self.step, cfg.optim, cfg.train.steps)
        for g in model.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        model.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.env.device)
        terms: dict[str, torch.Tensor] = {}
        for i, (images, labels, positions) in enumerate(batches):
            torch.manual_seed(mix_seed(cfg.train.seed, self.step, self.env.rank, i, "torch-global"))
            rng = SampleRNG(cfg.train.seed, self.step, positions, self.env.device)
            images = images.to(self.env.device, non_blocking=True)
            labels = labels.to(self.env.device, non_blocking=True)
            share = images.shape[0] / local
            with model.accumulating(i == len(batches) - 1 or self.env.world == 1):
                with autocast(self.env.device, cfg.train.precision):
                    loss, parts = model.forward(images, labels, rng, self.step)
                model.scaler.scale(loss * share).backward()
            total += loss.detach() * share
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v.detach().float() * share
        loss_ok = torch.isfinite(torch.stack([total, *terms.values()])).all()
        grad_ok = torch.isfinite(model.grad_norm(self.step)) | model.scaler.is_enabled()
        ok = (loss_ok & grad_ok).float()
        if cfg.train.nonfinite == "skip" and not bool(all_reduce_mean(ok) == 1):  # host sync: skip mode only
            model.skip()  # every rank skips the same steps
        else:
            model.update(self.step)
        return total, terms, grad_ok

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
        sampler = GlobalBatchSampler(len(self.dataset), cfg.train.global_batch, env.rank, env.world,
                                     self.batching.micro, cfg.train.seed, self.step, cfg.train.steps)
        return DataLoader(_Positioned(self.dataset), batch_sampler=sampler, num_workers=cfg.data.workers,
                          pin_memory=env.device.type == "cuda", persistent_workers=False,
                          worker_init_fn=_ignore_sigterm if cfg.data.workers else None)

    def fit(self, hooks: list[Hook] | None = None) -> TrainResult:
        """Train to `train.steps`; `hooks` are called with (RunView, step) after every step (engine.hooks)."""
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

    def _loop(self, hooks: list[Hook], logger: RunLogger) -> bool:
        t = self.cfg.train
        health = Health(self.env.device, self._log_state.get("skipped", 0.0))
        window = LogWindow(self.step, self._log_state, self.env.device)
        it = iter(self._loader())
        while self.step < t.steps:
            loss, terms, grad_ok = self.train_step([next(it) for _ in range(self.batching.accum)])
            health.record(self.step, torch.cat([torch.isfinite(torch.stack([loss, *terms.values()])),
                                                grad_ok.view(1)]))
            window.add({"loss": loss, **terms})
            self.step += 1
            logger.advance()
            stop = self._stop_requested()
            at_log = self.step % t.log_every == 0 or self.step == t.steps
            at_ckpt = self.step % t.ckpt_every == 0 or self.step == t.steps or stop
            if at_log or at_ckpt:
                self._check_finite(health, ["loss", *terms, "gradients"])
            extra: dict[str, float] = {}
            for hook in hooks:  # each decides whether its own step has come (not only on log steps)
                extra.update(hook(self.view, self.step) or {})
            if at_log:
                self._log(logger, window.close(self.step, t.global_batch), health, extra)
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
        lr = learning_rate(self.step - 1, self.cfg.optim, self.cfg.train.steps)  # that of the step just taken
        means.update(lr=lr, skipped_steps=float(health.skipped), **extra)
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
