"""Fréchet distance and feature statistics (METHOD.md §7) vs closed forms and an independent reference."""

import numpy as np
import pytest

from epg.metrics import MetricsError, feature_statistics, frechet_distance


def reference_fd(mu1, sigma1, mu2, sigma2):
    # Independent route: eigenvalues of the non-symmetric product Σ1Σ2, whose square roots sum to the trace.
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).real.clip(min=0.0)
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(eigenvalues).sum()


def random_orthogonal(rng, dim):
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("near_singular", [False, True])
def test_commuting_covariances_match_closed_form(near_singular):
    rng = np.random.default_rng(0)
    dim = 64
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    if near_singular:
        a[: dim // 2] = rng.uniform(0.0, 1e-12, dim // 2)
        b[dim // 4 :] = 0.0
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10, abs=1e-9)
    # Same spectra in a shared rotated basis: still commuting, same closed form.
    q = random_orthogonal(rng, dim)
    sigma1, sigma2 = (q * a) @ q.T, (q * b) @ q.T
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8, abs=1e-7)


def test_dense_covariances_match_eigen_reference():
    rng = np.random.default_rng(1)
    dim = 48
    x, y = rng.standard_normal((dim, dim)), rng.standard_normal((dim, dim))
    sigma1, sigma2 = x @ x.T / dim + 0.1 * np.eye(dim), y @ y.T / dim + 0.1 * np.eye(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    expected = reference_fd(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_rank_deficient_sample_covariances_match_eigen_reference():
    # Fewer samples than dimensions, as FID on 1 000 images in 2 048 dimensions.
    rng = np.random.default_rng(2)
    f1, f2 = rng.standard_normal((20, 60)), 0.5 + 1.5 * rng.standard_normal((25, 60))
    (mu1, sigma1), (mu2, sigma2) = feature_statistics(f1), feature_statistics(f2)
    assert np.linalg.matrix_rank(sigma1) == 19
    value = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(value)
    assert value == pytest.approx(reference_fd(mu1, sigma1, mu2, sigma2), rel=1e-7)
    assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-6)


def test_feature_statistics_are_float64_mean_and_unbiased_covariance():
    features = np.random.default_rng(3).standard_normal((30, 5)).astype(np.float32)
    mu, sigma = feature_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, features.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-12)


def test_bad_statistics_raise_one_clear_error():
    with pytest.raises(MetricsError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(MetricsError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
