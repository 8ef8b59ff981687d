"""Feature statistics and the Fréchet distance behind FID and sFID (METHOD.md §7)."""

from __future__ import annotations

import numpy as np

from epg.metrics.errors import MetricsError


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased as np.cov) of N×D features, as ADM (METHOD.md §7)."""
    if features.ndim != 2 or len(features) < 2:
        raise MetricsError(
            f"FID statistics need at least 2 feature vectors, got an array of shape {features.shape}"
        )
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _drop_rounding(eigenvalues: np.ndarray) -> np.ndarray:
    # A singular covariance has eigenvalues of ±rounding size (numpy's matrix_rank tolerance) instead of
    # zeros; their square roots (~1e-8 each) would add up over thousands of dimensions, so they become zeros.
    tolerance = max(eigenvalues.max(initial=0.0), 0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(_drop_rounding(eigenvalues))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1Σ2)^½ in float64 (METHOD.md §7)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise MetricsError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    # tr (Σ1Σ2)^½ = Σ √λ(Σ1^½ Σ2 Σ1^½): the sandwich is symmetric PSD, so eigh stays exact where
    # sqrtm(Σ1Σ2) needs ADM's eps·I retry (fewer images than dimensions makes both covariances singular).
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_root = np.sqrt(_drop_rounding(np.linalg.eigvalsh((middle + middle.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)
