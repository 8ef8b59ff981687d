"""Inception Score as ADM's evaluator computes it (METHOD.md §7), from the FID network's pool features.

ADM's evaluator takes the 2048-d pool features, multiplies them by the TF Inception's `softmax/logits` weight
matrix (no bias), applies softmax over the 1008 outputs and averages exp(E_x KL(p(y|x) ‖ p(y))) over splits of
5 000 samples. The bundled FID network stops at the pool, so that matrix comes from a file the user supplies:
the `fc.weight` (1008×2048) of the PyTorch ports of the same 2015-12-05 graph — torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth` or pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` — or any
`.safetensors` / `.npz` holding it as `weight` or `fc.weight`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from epg.metrics.errors import MetricsError

SPLIT_SIZE = 5000  # ADM's split_size
POOL_DIM = 2048
_KEYS = ("fc.weight", "weight", "softmax/logits/weights")


def inception_score(probs: np.ndarray, split_size: int = SPLIT_SIZE) -> float:
    """mean over splits of exp(mean_x Σ_y p(y|x)·(log p(y|x) − log p(y))), p(y) the split's mean (§7)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise MetricsError(f"inception_score takes N×K class probabilities, got shape {probs.shape}")
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start:start + split_size]
        marginal = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def class_probabilities(pool: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """softmax(pool · Wᵀ) in float64 — the unbiased logits ADM's evaluator reads."""
    logits = np.asarray(pool, np.float64) @ np.asarray(weight, np.float64).T
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def load_classifier(path: str | os.PathLike[str]) -> np.ndarray:
    """The K×2048 classifier weight from a `.pth` (read with weights_only), `.safetensors` or `.npz` file."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"--is-weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                tensors = {k: data[k] for k in data.files}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise MetricsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
            tensors = {k: v.numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}
    except pickle.UnpicklingError:
        raise MetricsError(f"{path}: refused — it holds objects other than tensors (never unpickled)") from None
    except (OSError, ValueError, RuntimeError, zipfile.BadZipFile) as e:
        raise MetricsError(f"{path}: unreadable weight file ({str(e).strip()[:120]})") from None
    for key in _KEYS:
        w = tensors.get(key)
        if w is not None and w.ndim == 2 and POOL_DIM in w.shape:
            return w if w.shape[1] == POOL_DIM else w.T
    raise MetricsError(f"{path}: no classifier weight over the 2048 pool features (looked for "
                       f"{', '.join(_KEYS)}; found {sorted(tensors)[:6]})")
