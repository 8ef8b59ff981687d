"""k-NN probe of stage-1 representations: the health signal of METHOD.md §3 ("rises during pre-training").

The probe reads LN(CLS) of clean images at a given (unshifted) σ, σ_min by default, with the pixels prepared
exactly as in training (the dataset's padding, the config's normalisation, c_in and the shift s), and votes for
the held-out split with the nearest training images. The same vote on the raw pixels is the baseline that an
encoder has to beat to be worth anything: `knn_report` returns both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from epg.config import Config
from epg.data import open_dataset
from epg.nn import encode
from epg.noise import add_noise
from epg.pixels import normalize


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk: int = 1024) -> float:
    """Weighted k-NN (cosine similarity, votes exp(sim/T), as in DINO's probe) top-1 accuracy."""
    train = F.normalize(train_features.flatten(1).float(), dim=1)
    test = F.normalize(test_features.flatten(1).float(), dim=1)
    k = min(k, train.shape[0])
    correct = 0
    for start in range(0, test.shape[0], chunk):
        sims, idx = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], torch.exp(sims / temperature))
        correct += int((votes.argmax(1) == test_labels[start:start + chunk]).sum())
    return correct / max(test.shape[0], 1)


def pixel_features(images: torch.Tensor, sigma_shifted: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The raw-pixel baseline's features: uint8 images as vectors in [0, 1] (zero padding adds nothing), plus
    the forward process's noise σ'·ε of the normalised space (σ'/2 in [0, 1] units, `minus_one`) if σ' > 0."""
    x = images.flatten(1).float() / 255.0
    if sigma_shifted > 0:
        x = x + sigma_shifted / 2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).flatten(1)
    return x


@torch.no_grad()
def encoder_features(net: torch.nn.Module, cfg: Config, images: torch.Tensor, sigma: float | None = None,
                     batch: int = 256, seed: int = 0) -> torch.Tensor:
    """LN(CLS) of images noised to unshifted σ (default σ_min), prepared as in training; fixed noise per seed."""
    device = next(net.parameters()).device
    sigma = (cfg.noise.sigma_min if sigma is None else sigma) * cfg.sigma_shift
    gen = torch.Generator().manual_seed(seed)
    out = []
    for chunk in images.split(batch):
        x = normalize(chunk, cfg.noise.normalization)
        x = add_noise(x, sigma, torch.randn(x.shape, generator=gen)).to(device)
        s = torch.full((x.shape[0],), sigma, device=device)
        out.append(encode(net, x, s, cfg.noise.sigma_data).float().cpu())
    return torch.cat(out)


def probe_split(cfg: Config, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n images (evenly spaced) of a split, with labels, at the model's resolution (padded as in training)."""
    held_out = split == cfg.data.eval_split and cfg.data.eval_source
    source = cfg.data.eval_source if held_out else cfg.data.source
    ds = open_dataset(source, split, resolution=cfg.model.img_size)
    idx = torch.linspace(0, len(ds) - 1, min(n, len(ds))).long().tolist()
    items = [ds[i] for i in idx]
    return torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])


class KnnProbe:
    """The probe's data (n_train train-split / n_test held-out images), loaded once and reused across encoders."""

    def __init__(self, cfg: Config, n_train: int = 5000, n_test: int = 1000):
        self.cfg = cfg
        self.xtr, self.ytr = probe_split(cfg, cfg.data.split, n_train)
        self.xte, self.yte = probe_split(cfg, cfg.data.eval_split, n_test)
        self.num_classes = max(cfg.model.num_classes, int(self.ytr.max()) + 1)
        self._pixels: dict[float, float] = {}

    def pixels(self, sigma: float = 0.0) -> float:
        """The same vote on raw pixels, noised to unshifted σ as the encoder input is (clean by default)."""
        if sigma not in self._pixels:
            s = sigma * self.cfg.sigma_shift
            self._pixels[sigma] = knn_accuracy(pixel_features(self.xtr, s), self.ytr, pixel_features(self.xte, s, 1),
                                               self.yte, self.num_classes)
        return self._pixels[sigma]

    def encoder(self, net: torch.nn.Module, sigma: float | None = None) -> float:
        """k-NN accuracy of LN(CLS) at unshifted σ (default σ_min); noise is the same for every encoder."""
        was_training = net.training
        net.eval()
        try:
            return knn_accuracy(encoder_features(net, self.cfg, self.xtr, sigma), self.ytr,
                                encoder_features(net, self.cfg, self.xte, sigma, seed=1), self.yte, self.num_classes)
        finally:
            net.train(was_training)


def knn_report(net: torch.nn.Module, cfg: Config, n_train: int = 5000, n_test: int = 1000) -> dict[str, float]:
    """{"knn_acc": encoder at σ_min, "knn_pixels": raw pixels}, on the same images."""
    probe = KnnProbe(cfg, n_train, n_test)
    return {"knn_acc": probe.encoder(net), "knn_pixels": probe.pixels()}
