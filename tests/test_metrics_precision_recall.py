"""Improved precision/recall with k = 3 (METHOD.md §7): limits, and chunked = brute force."""

import numpy as np
import pytest

from epg.metrics import MetricsError, manifold_radii, precision_recall


def brute_force(samples, reference, k=3):
    def distances(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    def radii(x):
        return np.sort(distances(x, x), axis=1)[:, k]

    precision = (distances(samples, reference) <= radii(reference)[None, :]).any(1).mean()
    recall = (distances(reference, samples) <= radii(samples)[None, :]).any(1).mean()
    return radii(samples), radii(reference), precision, recall


def test_identical_sets_give_full_precision_and_recall():
    features = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    assert precision_recall(features, features.copy()) == (1.0, 1.0)


def test_far_apart_clusters_give_zero_precision_and_recall():
    rng = np.random.default_rng(1)
    samples = rng.standard_normal((40, 16)).astype(np.float32)
    reference = 100.0 + rng.standard_normal((30, 16)).astype(np.float32)
    assert precision_recall(samples, reference) == (0.0, 0.0)


def test_chunked_equals_brute_force():
    rng = np.random.default_rng(2)
    samples = rng.standard_normal((37, 8)).astype(np.float32)
    reference = 1.0 + rng.standard_normal((41, 8)).astype(np.float32)
    sample_radii, reference_radii, precision, recall = brute_force(
        samples.astype(np.float64), reference.astype(np.float64)
    )
    np.testing.assert_allclose(manifold_radii(samples, chunk=5), sample_radii, rtol=1e-5)
    np.testing.assert_allclose(manifold_radii(reference, chunk=5), reference_radii, rtol=1e-5)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0
    assert precision_recall(samples, reference, chunk=5) == pytest.approx((precision, recall), abs=1e-12)
    assert precision_recall(samples, reference, chunk=5) == precision_recall(samples, reference)


def test_too_few_points_is_a_clear_error():
    with pytest.raises(MetricsError, match="more than 3 feature vectors"):
        precision_recall(np.zeros((3, 4), np.float32), np.ones((10, 4), np.float32))
