"""Reference statistics for FID, sFID and precision/recall, computed once, cached as `.npz` (METHOD.md §7)."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epg.metrics.errors import MetricsError
from epg.metrics.fid import feature_statistics
from epg.metrics.inception import FIDInception, load_inception
from epg.metrics.sources import ImageSource, npz_members, open_images

DEFAULT_BATCH_SIZE = 32
_STATS = ("mu", "sigma", "mu_s", "sigma_s")


@dataclass
class ReferenceStats:
    """Pool mean/covariance (FID), spatial mean/covariance (sFID) and pool features (precision/recall), §7."""

    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    features: np.ndarray | None = None
    count: int | None = None
    path: Path | None = None


def default_cache_dir() -> Path:
    """`$EPG_CACHE/fid`, else `~/.cache/epg/fid`: where reference statistics are kept (METHOD.md §7)."""
    root = os.environ.get("EPG_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "epg") / "fid"


def cache_file(source: ImageSource, network: FIDInception, cache_dir: str | os.PathLike[str] | None) -> Path:
    """The cache entry for these reference images, this image count and this network file (METHOD.md §7)."""
    key = hashlib.sha256(f"{source.identity()}|{source.count}|{network.sha256}".encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.name).name)[:48]
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{readable}-n{source.count}-{key}.npz"


def read_statistics(path: Path, num_ref: int | None = None) -> ReferenceStats:
    """A stats `.npz` (this cache's or any with `mu`, `sigma`; optional `mu_s`, `sigma_s`, `features`), §7."""
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise MetricsError(f"{path} is not a readable statistics .npz ({error}); delete it to recompute") from error
    if "mu" not in arrays or "sigma" not in arrays:
        raise MetricsError(f"{path} has no 'mu'/'sigma' statistics")
    count = int(arrays["count"]) if "count" in arrays else None
    if num_ref is not None and count != num_ref:
        raise MetricsError(f"{path} holds statistics of {count if count is not None else 'an unrecorded number of'} "
                           f"images, not {num_ref}: drop --num-ref or pass the images themselves")
    return ReferenceStats(**{name: arrays.get(name) for name in (*_STATS, "features")}, count=count, path=path)


def _write_statistics(path: Path, stats: ReferenceStats, identity: str, network: FIDInception) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(stats, name) for name in (*_STATS, "features")}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays, count=np.int64(stats.count), reference=identity, inception_sha256=network.sha256)
    # A crash mid-write must not leave a truncated file that later reads as a cache hit.
    os.replace(temporary, path)


def _adm_precomputed(path: Path) -> dict[str, np.ndarray]:
    # ADM reference batches ship the statistics its evaluator uses; FID must use those, not a recomputation.
    members = npz_members(path)
    wanted = [name for name in _STATS if name in members]
    if "mu" not in wanted or "sigma" not in wanted:
        return {}
    with np.load(path) as data:
        return {name: data[name] for name in wanted}


def reference_statistics(ref: str | os.PathLike[str], num_ref: int | None = None, network: FIDInception | None = None,
                         cache_dir: str | os.PathLike[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                         need_features: bool = True) -> ReferenceStats:
    """Statistics of REF (ADM/sample `.npz`, stats `.npz`, image folder, dataset name), cached (§7).

    With need_features=False (FID only) an ADM batch's shipped mu/sigma answer without running the network.
    """
    path = Path(ref)
    precomputed: dict[str, np.ndarray] = {}
    if path.suffix.lower() == ".npz" and path.is_file():
        if "arr_0" not in npz_members(path):
            if {"mu", "sigma"} <= set(npz_members(path)):
                return read_statistics(path, num_ref)
            raise MetricsError(f"{path} has neither arr_0 (uint8 N×H×W×C reference images) nor mu/sigma statistics: "
                               "pass an ADM reference batch, a sample .npz, a stats .npz, an image folder or a dataset "
                               "name")
        precomputed = _adm_precomputed(path)
    source = open_images(ref, "reference")
    if num_ref is not None and num_ref != source.count:
        # The shipped statistics describe the whole batch, not its first num_ref images.
        precomputed = {}
    source.take(num_ref)
    if precomputed and not need_features:
        return ReferenceStats(**precomputed, count=source.count)
    network = network if network is not None else load_inception()
    target = cache_file(source, network, cache_dir)
    if target.is_file():
        try:
            return read_statistics(target)
        except MetricsError:
            pass  # an unreadable cache entry is recomputed and replaced below
    features = network.extract(source.batches(batch_size), source.count, desc=f"reference {source.name}")
    mu, sigma = feature_statistics(features.pool)
    mu_s, sigma_s = feature_statistics(features.spatial)
    stats = ReferenceStats(mu, sigma, mu_s, sigma_s, features.pool, source.count, target)
    for name, value in precomputed.items():
        setattr(stats, name, value)
    _write_statistics(target, stats, source.identity(), network)
    return stats
