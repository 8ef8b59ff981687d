"""FID, sFID and precision/recall of samples against a reference, as ADM's evaluator (METHOD.md §7)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epg.metrics.errors import MetricsError, MetricsWarning
from epg.metrics.fid import feature_statistics, frechet_distance
from epg.metrics.inception import load_inception
from epg.metrics.inception_score import class_probabilities, inception_score, load_classifier
from epg.metrics.precision_recall import precision_recall
from epg.metrics.reference import DEFAULT_BATCH_SIZE, reference_statistics
from epg.metrics.sources import ImageSource, npz_members, open_images


def fid_against(images: torch.Tensor, ref: str, num_ref: int | None = None,
                cache_dir: str | os.PathLike[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                inception: str | os.PathLike[str] | None = None) -> float:
    """FID of uint8 NCHW `images` against REF with cached reference statistics (METHOD.md §7)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise MetricsError(f"fid_against takes uint8 N×C×H×W images, C = 1 or 3, got {images.dtype} "
                           f"{tuple(images.shape)}")
    network = load_inception(inception)
    reference = reference_statistics(ref, num_ref, network, cache_dir, batch_size, need_features=False)
    features = network.extract(images.detach().cpu().split(batch_size), len(images), desc="FID samples")
    mu, sigma = feature_statistics(features.pool)
    return frechet_distance(mu, sigma, reference.mu, reference.sigma)


def _geometry_text(g: tuple[int, int, int]) -> str:
    return f"{g[0]}×{g[1]} {'RGB' if g[2] == 3 else 'grey'}"


def _warn_on_other_geometry(source: ImageSource, ref: str) -> None:
    """Samples and reference of different sizes or channels give a number, but not a comparable FID."""
    path = Path(ref)
    if path.suffix.lower() == ".npz" and path.is_file() and "arr_0" not in npz_members(path):
        return  # statistics only: the reference images' size is not recorded
    theirs, ours = open_images(ref, "reference").geometry(), source.geometry()
    if theirs != ours:
        warnings.warn(f"the samples are {_geometry_text(ours)} but the reference {ref} is "
                      f"{_geometry_text(theirs)}: the scores compare different images; sample at the reference's "
                      "size", MetricsWarning, stacklevel=3)


def evaluate(samples: np.ndarray | str | os.PathLike[str], ref: str, num_ref: int | None = None,
             cache_dir: str | os.PathLike[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
             inception: str | os.PathLike[str] | None = None, is_weights: str | os.PathLike[str] | None = None,
             ) -> dict[str, Any]:
    """All metrics of samples (uint8 NHWC array, `.npz` or image folder) against REF (METHOD.md §7).

    sFID is None when REF is a stats file without spatial statistics; precision/recall, without features;
    the Inception Score, unless `is_weights` names the Inception's classifier weight (inception_score.py).
    """
    classifier = load_classifier(is_weights) if is_weights is not None else None
    source = open_images(samples, "samples")
    _warn_on_other_geometry(source, ref)
    network = load_inception(inception)
    reference = reference_statistics(ref, num_ref, network, cache_dir, batch_size)
    features = network.extract(source.batches(batch_size), source.count, desc="samples")
    mu, sigma = feature_statistics(features.pool)
    results: dict[str, Any] = {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma), "sfid": None,
                               "precision": None, "recall": None, "inception_score": None}
    if classifier is not None:
        results["inception_score"] = inception_score(class_probabilities(features.pool, classifier))
    if reference.mu_s is not None and reference.sigma_s is not None:
        mu_s, sigma_s = feature_statistics(features.spatial)
        results["sfid"] = frechet_distance(mu_s, sigma_s, reference.mu_s, reference.sigma_s)
    if reference.features is not None:
        results["precision"], results["recall"] = precision_recall(features.pool, reference.features)
    results.update(num_samples=source.count, num_ref=reference.count, ref=str(ref), inception=str(network.path),
                   inception_sha256=network.sha256)
    return results
