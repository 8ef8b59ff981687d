"""Feature statistics and the Fréchet distance behind FID and sFID (METHOD.md §7)."""

from __future__ import annotations

import numpy as np
from scipy.linalg.lapack import dpstrf

from epg.metrics.errors import MetricsError


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64, unbiased as np.cov) of N×D features, as ADM (METHOD.md §7)."""
    if features.ndim != 2 or len(features) < 2:
        raise MetricsError(f"FID statistics need at least 2 feature vectors, got an array of shape {features.shape}")
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _drop_rounding(eigenvalues: np.ndarray) -> np.ndarray:
    # Rank-deficient products have eigenvalues of ±rounding size (numpy's matrix_rank tolerance) instead of
    # zeros; their square roots (~1e-8 each) would add up over thousands of dimensions, so they become zeros.
    tolerance = max(eigenvalues.max(initial=0.0), 0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    # Pivoted Cholesky Σ = F Fᵀ with F of the numerical rank r: exact for the singular covariances of fewer
    # images than dimensions, where plain Cholesky fails and sqrtm needs ADM's eps·I retry.
    factor, pivots, rank, info = dpstrf(sigma, lower=1)
    if info < 0:
        raise MetricsError(f"covariance of shape {sigma.shape} is not a valid symmetric matrix")
    permuted = np.tril(factor)[:, :rank]
    unpermuted = np.empty_like(permuted)
    unpermuted[pivots - 1] = permuted
    return unpermuted


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1Σ2)^½ in float64 (METHOD.md §7)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise MetricsError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                           f"{sigma2.shape}")
    # With Σ1 = F Fᵀ, Σ1Σ2 shares its non-zero eigenvalues with the symmetric PSD r×r matrix Fᵀ Σ2 F, so
    # tr (Σ1Σ2)^½ needs one factorisation and one r×r eigvalsh: several times cheaper than sqrtm or eigh.
    factor = _psd_factor(sigma1)
    middle = factor.T @ sigma2 @ factor
    trace_root = np.sqrt(_drop_rounding(np.linalg.eigvalsh((middle + middle.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)
