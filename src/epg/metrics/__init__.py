"""ADM-style evaluation: FID, sFID, improved precision/recall with the TF FID Inception (METHOD.md §7)."""

from epg.metrics.errors import MetricsError
from epg.metrics.evaluate import evaluate, fid_against
from epg.metrics.fid import feature_statistics, frechet_distance
from epg.metrics.inception import FIDInception, load_inception
from epg.metrics.precision_recall import manifold_radii, precision_recall
from epg.metrics.reference import ReferenceStats, default_cache_dir, reference_statistics

__all__ = ["FIDInception", "MetricsError", "ReferenceStats", "default_cache_dir", "evaluate", "feature_statistics",
           "fid_against", "frechet_distance", "load_inception", "manifold_radii", "precision_recall",
           "reference_statistics"]
