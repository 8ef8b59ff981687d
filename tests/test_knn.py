"""The k-NN probe (epg.metrics.knn): hand-checked votes, separable clusters, shuffled labels, and features
prepared exactly as stage 1 prepares its inputs (padding, normalisation, shift, c_in)."""

from __future__ import annotations

import math

import torch

from epg.data import open_dataset
from epg.engine.setup import build_objective
from epg.metrics.knn import KnnProbe, encoder_features, knn_accuracy, pixel_features, probe_split
from epg.presets import get_preset
from epg.rng import SampleRNG

torch.set_num_threads(1)

TINY = {"model.enc_depth": 2, "model.enc_width": 32, "model.enc_heads": 2, "model.proj_hidden": 64,
        "model.proj_out": 16, "model.dec_width": 32, "model.dec_heads": 2}


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_weighted_vote_by_hand():
    # Test at 10°: train A (label 0) at 0°, B1, B2 (label 1) at 50° and 55°. Cosines 0.985, 0.766, 0.707.
    # With T = 0.07 the votes are exp(14.07) for label 0 against exp(10.94) + exp(10.10) for label 1, so the
    # weighted vote picks 0 although two of the three neighbours are 1; with T = 1 the votes are e^0.985 = 2.68
    # against e^0.766 + e^0.707 = 4.18 and it picks 1. k = 1 keeps only A.
    train = torch.tensor([_unit(0), _unit(50), _unit(55), _unit(180)])
    labels = torch.tensor([0, 1, 1, 1])
    test = torch.tensor([_unit(10)])
    assert knn_accuracy(train, labels, test, torch.tensor([0]), 2, k=3, temperature=0.07) == 1.0
    assert knn_accuracy(train, labels, test, torch.tensor([1]), 2, k=3, temperature=1.0) == 1.0
    assert knn_accuracy(train, labels, test, torch.tensor([0]), 2, k=1, temperature=1.0) == 1.0
    # Cosine, not Euclidean: scaling a training vector does not move it.
    assert knn_accuracy(train * torch.tensor([[100.0], [1], [1], [1]]), labels, test, torch.tensor([0]), 2, k=3) == 1.0


def _clusters(n_per: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:classes] * 10.0
    labels = torch.arange(classes).repeat_interleave(n_per)
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_separable_clusters_score_one_and_shuffled_labels_score_chance():
    xtr, ytr = _clusters(200, 10, 16, seed=0)
    xte, yte = _clusters(200, 10, 16, seed=1)
    assert knn_accuracy(xtr, ytr, xte, yte, 10) == 1.0
    # Training labels shuffled: the neighbours' labels carry nothing about the test label. 2 000 test images:
    # binomial std of chance (0.1) is 0.0067, so ±0.03 is 4.5 std.
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(2))]
    assert abs(knn_accuracy(xtr, shuffled, xte, yte, 10) - 0.1) < 0.03


def test_probe_features_are_the_training_inputs():
    """LN(CLS) as the stage-1 objective computes it from the same noisy input: normalisation, shift s, c_in."""
    cfg = get_preset("fmnist-tiny", "pretrain", TINY)
    torch.manual_seed(0)
    obj = build_objective(cfg, verbose=False)
    net = obj.net.eval()
    images = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    sigma = 0.5  # unshifted; the network sees 0.5·s = 0.25 at 32²
    feats = encoder_features(net, cfg, images, sigma=sigma, seed=4)
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(4))
    x0 = obj.prepare(images, SampleRNG(0, 0, torch.arange(5)), hflip=False)
    s = torch.full((5,), sigma * cfg.sigma_shift)
    expected = obj._encode(net, x0 + s.view(-1, 1, 1, 1) * eps, s, projector=False)
    assert torch.allclose(torch.nn.functional.normalize(feats, dim=1), expected, atol=1e-5)
    # the σ argument is used: the features at σ_min differ
    assert not torch.allclose(feats, encoder_features(net, cfg, images, seed=4), atol=1e-2)


def test_probe_images_are_padded_as_in_training():
    cfg = get_preset("fmnist-tiny", "pretrain")
    images, labels = probe_split(cfg, "test", 3)
    ds = open_dataset(cfg.data.source, "test", resolution=cfg.model.img_size)  # what the Trainer opens
    last = len(ds) - 1
    for i, index in enumerate([0, last // 2, last]):
        image, label = ds[index]
        assert torch.equal(images[i], image) and int(labels[i]) == label
    assert images.shape[1:] == (1, 32, 32) and int(images[..., :2, :].max()) == 0  # 28 → 32 with zeros


def test_pixel_baseline_is_the_same_vote_on_pixels():
    cfg = get_preset("fmnist-tiny", "pretrain")
    probe = KnnProbe(cfg, n_train=300, n_test=100)
    expected = knn_accuracy(pixel_features(probe.xtr), probe.ytr, pixel_features(probe.xte), probe.yte, 10)
    assert probe.pixels() == expected
    assert torch.equal(pixel_features(probe.xtr[:1]), probe.xtr[:1].flatten(1).float() / 255.0)


def test_noisy_pixel_baseline_uses_the_forward_process_noise():
    images = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    clean = pixel_features(images)
    assert torch.equal(pixel_features(images, 0.0), clean)
    # σ' = 1 in the normalised space (x/127.5 − 1) is 0.5 in [0, 1] units
    noise = pixel_features(images, 1.0, seed=3) - clean
    assert abs(noise.std().item() - 0.5) < 0.01  # 65 536 draws: std of the std ≈ 0.0014
    assert torch.equal(pixel_features(images, 1.0, seed=3), pixel_features(images, 1.0, seed=3))
