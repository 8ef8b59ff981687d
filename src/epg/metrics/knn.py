"""k-NN probe of stage-1 representations: the health signal of METHOD.md §3 ("rises during pre-training")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk: int = 1024) -> float:
    """Weighted k-NN (cosine similarity, votes exp(sim/T), as in DINO's probe) top-1 accuracy."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    correct = 0
    for start in range(0, test.shape[0], chunk):
        sims, idx = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], torch.exp(sims / temperature))
        correct += int((votes.argmax(1) == test_labels[start:start + chunk]).sum())
    return correct / max(test.shape[0], 1)
