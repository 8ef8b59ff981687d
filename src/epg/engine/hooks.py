"""Periodic evaluations during training: sample grids, FID, and the stage-1 k-NN probe."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from epg.config import Config
from epg.engine.distributed import barrier, gather_cat
from epg.engine.runlog import save_image_grid
from epg.generate import generate
from epg.metrics.knn import knn_report
from epg.nn import build_generator, build_rcm

Hook = Callable[[object, int], dict]


class _Every:
    """Run `fn` at every multiple of `every` steps and at the last one, saying what runs (training pauses)."""

    def __init__(self, every: int, fn: Callable[[object, int], dict], what: str):
        self.every, self.fn, self.what = every, fn, what

    def __call__(self, trainer, step: int) -> dict:
        if step % self.every and step != trainer.cfg.train.steps:
            return {}
        if trainer.env.is_main:
            tqdm.write(f"epg: step {step}: {self.what} (training pauses meanwhile)")
        return self.fn(trainer, step)


def eval_network(trainer) -> torch.nn.Module:
    """An unsharded network holding the EMA weights (the online ones without EMA); every rank must call it."""
    cfg = trainer.cfg
    state = trainer.ema_state()  # gathers shards under FSDP, hence on every rank
    net = build_rcm(cfg.model) if cfg.stage == "pretrain" else build_generator(cfg.model)
    if trainer.fsdp:  # only rank 0 holds the gathered state: share it
        objects = [state]
        torch.distributed.broadcast_object_list(objects, src=0)
        state = objects[0]
    net.load_state_dict(state)
    return net.to(trainer.env.device).eval()


def eval_reference(cfg: Config) -> str:
    """The FID reference: the held-out split of the training data, at the model's resolution."""
    source = cfg.data.eval_source or cfg.data.source
    if source == "fmnist":
        return f"fmnist-{cfg.data.eval_split}@{cfg.model.img_size}"
    return source


def sample_grid_hook(trainer, step: int) -> dict:
    cfg = trainer.cfg
    n = 100 if cfg.model.num_classes == 10 else 64
    net = eval_network(trainer)
    if trainer.env.is_main:
        labels = torch.arange(10).repeat_interleave(10) if n == 100 else None  # one row per class
        images, _, _ = generate(net, cfg, range(n), n, seed=cfg.sample.seed, labels=labels, progress=True)
        path = trainer.run_dir / "samples" / f"step-{step:08d}.png"
        save_image_grid(images, path, cols=10 if n == 100 else None, scale=max(1, 64 // cfg.model.img_size))
    barrier()
    return {}


def fid_hook(trainer, step: int) -> dict:
    """FID of `train.fid_num` EMA samples; each process makes and embeds its share (METHOD.md §7)."""
    from epg.metrics import feature_statistics, frechet_distance, load_inception, reference_statistics

    cfg, env = trainer.cfg, trainer.env
    n = cfg.train.fid_num
    share = range(env.rank * n // env.world, (env.rank + 1) * n // env.world)
    images, _, _ = generate(eval_network(trainer), cfg, share, n, seed=cfg.sample.seed, batch_size=128,
                            progress=env.is_main)
    network = load_inception()
    feats = network.extract(images.split(50), len(images), desc="FID").pool
    feats = gather_cat(torch.from_numpy(np.ascontiguousarray(feats)).to(env.device)).cpu().double().numpy()
    fid = float("nan")
    if env.is_main:
        # As many reference images as samples (cached after the first call); a full ADM reference batch of that
        # size uses its precomputed statistics.
        ref = reference_statistics(eval_reference(cfg), n, network, need_features=False)
        mu, sigma = feature_statistics(feats)
        fid = frechet_distance(mu, sigma, ref.mu, ref.sigma)
    return {"fid": fid} if env.is_main else {}


def knn_hook(trainer, step: int) -> dict:
    """k-NN of LN(CLS) at σ_min, with the raw-pixel baseline on the same images beside it."""
    result = knn_report(trainer.net, trainer.cfg) if trainer.env.is_main else {}
    barrier()
    return result


def default_hooks(cfg: Config) -> list[Hook]:
    """The evaluations a stage's config asks for."""
    t = cfg.train
    hooks: list[Hook] = []
    if cfg.stage == "pretrain":
        if t.knn_every:
            hooks.append(_Every(t.knn_every, knn_hook, "k-NN probe of the encoder"))
        return hooks
    if t.sample_every:
        hooks.append(_Every(t.sample_every, sample_grid_hook, "sample grid"))
    if t.fid_every:
        hooks.append(_Every(t.fid_every, fid_hook, f"FID of {t.fid_num} samples"))
    return hooks
