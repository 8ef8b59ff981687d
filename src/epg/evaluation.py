"""Evaluations during training, as engine hooks: sample grids, FID, and the stage-1 k-NN probe (by stage)."""

from __future__ import annotations

import numpy as np
import torch

from epg.config import Config
from epg.dist import barrier, gather_cat
from epg.engine.hooks import Every, Hook, RunView
from epg.engine.runlog import save_image_grid
from epg.generate import generate
from epg.metrics.knn import knn_report
from epg.stages import stage_of


def eval_reference(cfg: Config) -> str:
    """The FID reference: the held-out split of the training data, at the model's resolution."""
    source = cfg.data.eval_source or cfg.data.source
    if source == "fmnist":
        return f"fmnist-{cfg.data.eval_split}@{cfg.model.img_size}"
    return source


def sample_grid_hook(run: RunView, step: int) -> dict:
    cfg = run.cfg
    n = 100 if cfg.model.num_classes == 10 else 64
    net = run.eval_network()
    if run.env.is_main:
        labels = torch.arange(10).repeat_interleave(10) if n == 100 else None  # one row per class
        images, _, _ = generate(net, cfg, range(n), n, seed=cfg.sample.seed, labels=labels, progress=True)
        path = run.run_dir / "samples" / f"step-{step:08d}.png"
        save_image_grid(images, path, cols=10 if n == 100 else None, scale=max(1, 64 // cfg.model.img_size))
    barrier()
    return {}


def fid_hook(run: RunView, step: int) -> dict:
    """FID of `train.fid_num` EMA samples; each process makes and embeds its share (METHOD.md §7)."""
    from epg.metrics import feature_statistics, frechet_distance, load_inception, reference_statistics

    cfg, env = run.cfg, run.env
    n = cfg.train.fid_num
    share = range(env.rank * n // env.world, (env.rank + 1) * n // env.world)
    images, _, _ = generate(run.eval_network(), cfg, share, n, seed=cfg.sample.seed, batch_size=128,
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


def knn_hook(run: RunView, step: int) -> dict:
    """k-NN of LN(CLS) at σ_min, with the raw-pixel baseline on the same images beside it."""
    result = knn_report(run.online(), run.cfg) if run.env.is_main else {}
    barrier()
    return result


# name (as each stage lists it in epg.stages) → (its interval in cfg.train, the hook, what it does)
HOOKS = {
    "knn": ("knn_every", knn_hook, "k-NN probe of the encoder"),
    "samples": ("sample_every", sample_grid_hook, "sample grid"),
    "fid": ("fid_every", fid_hook, "FID of {t.fid_num} samples"),
}


def default_hooks(cfg: Config) -> list[Hook]:
    """The evaluations of the config's stage that its config asks for (a non-zero interval)."""
    t, hooks = cfg.train, []
    for field, fn, what in (HOOKS[name] for name in stage_of(cfg).hooks):
        if getattr(t, field):
            hooks.append(Every(getattr(t, field), fn, what.format(t=t)))
    return hooks
