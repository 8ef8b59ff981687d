"""ADM's improved precision and recall: k-nearest-neighbour manifolds of pool features (METHOD.md §7)."""

from __future__ import annotations

import numpy as np
import torch

from epg.metrics.errors import MetricsError

NEIGHBOURS = 3
# Distance blocks of CHUNK×CHUNK fp32 (64 MB) so a 50k×50k matrix never sits in memory.
CHUNK = 4096


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # One matmul per block as ADM's distance block; rounding can push |a−b|² of near-equal rows below zero.
    return (a.square().sum(1, keepdim=True) - 2.0 * a @ b.T + b.square().sum(1)).clamp_(min=0.0)


def _as_tensor(features: np.ndarray, k: int) -> torch.Tensor:
    if features.ndim != 2 or len(features) <= k:
        raise MetricsError(f"precision/recall with k={k} needs more than {k} feature vectors, got {features.shape}")
    return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))


def manifold_radii(features: np.ndarray, k: int = NEIGHBOURS, chunk: int = CHUNK) -> np.ndarray:
    """Squared distance from each feature to its k-th nearest neighbour within the same set (METHOD.md §7)."""
    x = _as_tensor(features, k)
    radii = torch.empty(len(x))
    for start in range(0, len(x), chunk):
        rows = x[start : start + chunk]
        nearest = rows.new_empty(len(rows), 0)
        for col in range(0, len(x), chunk):
            candidates = torch.cat([nearest, _squared_distances(rows, x[col : col + chunk])], dim=1)
            nearest = candidates.topk(min(k + 1, candidates.shape[1]), dim=1, largest=False).values
        # The point itself sits at position 0 (distance 0), so position k is its k-th neighbour, as in ADM.
        radii[start : start + chunk] = nearest[:, k]
    return radii.numpy()


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    inside = torch.zeros(len(points), dtype=torch.bool)
    for start in range(0, len(points), chunk):
        rows = points[start : start + chunk]
        for col in range(0, len(centres), chunk):
            within = _squared_distances(rows, centres[col : col + chunk]) <= radii[col : col + chunk]
            inside[start : start + chunk] |= within.any(dim=1)
    return inside


def precision_recall(samples: np.ndarray, reference: np.ndarray, k: int = NEIGHBOURS, chunk: int = CHUNK,
                     ) -> tuple[float, float]:
    """Precision: share of samples inside the reference manifold; recall: the reverse (METHOD.md §7)."""
    x, y = _as_tensor(samples, k), _as_tensor(reference, k)
    sample_radii = torch.from_numpy(manifold_radii(samples, k, chunk))
    reference_radii = torch.from_numpy(manifold_radii(reference, k, chunk))
    precision = _inside_any_ball(x, y, reference_radii, chunk).double().mean().item()
    recall = _inside_any_ball(y, x, sample_radii, chunk).double().mean().item()
    return precision, recall
