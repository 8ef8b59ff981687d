"""Inception Score (metrics/inception_score.py): hand-computed values, ADM's splits, the weight file, the CLI."""

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from epg.metrics.cli import add_parser
from epg.metrics.errors import MetricsError
from epg.metrics.inception import load_inception
from epg.metrics.inception_score import class_probabilities, inception_score, load_classifier


def test_hand_computed_scores():
    k = 8
    assert inception_score(np.full((40, k), 1 / k)) == pytest.approx(1.0)  # every image the same p: KL 0
    assert inception_score(np.eye(k)[np.arange(40) % k]) == pytest.approx(k)  # sure and evenly spread
    # two classes, p(y|x) = (0.9, 0.1) and (0.1, 0.9) half each: marginal (0.5, 0.5)
    p = np.array([[0.9, 0.1], [0.1, 0.9]] * 5)
    kl = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    assert inception_score(p) == pytest.approx(np.exp(kl))


def test_adm_splits_of_5000_are_scored_separately_and_averaged():
    # First split: one-hot over 2 classes (IS 2); second split: one class only (IS 1) → mean 1.5.
    first = np.eye(4)[np.arange(5000) % 2]
    second = np.eye(4)[np.zeros(5000, int)]
    assert inception_score(np.concatenate([first, second])) == pytest.approx(1.5)
    # one split of all 10 000: p(y) = (3/4, 1/4); KL is log(4/3) for class-0 images and log 4 for class 1
    assert inception_score(np.concatenate([first, second]), split_size=10_000) == pytest.approx(
        np.exp(0.75 * np.log(4 / 3) + 0.25 * np.log(4)))


def test_probabilities_are_the_softmax_of_unbiased_logits():
    rng = np.random.default_rng(0)
    pool, w = rng.normal(size=(3, 2048)), rng.normal(size=(1008, 2048)) * 0.01
    probs = class_probabilities(pool, w)
    ref = torch.softmax(torch.from_numpy(pool @ w.T), 1).numpy()
    np.testing.assert_allclose(probs, ref, rtol=1e-12)


def test_weight_files_are_read_safely(tmp_path):
    w = torch.randn(1008, 2048)
    torch.save(OrderedDict([("fc.weight", w), ("fc.bias", torch.zeros(1008)), ("conv.weight", torch.ones(2))]),
               tmp_path / "pt_inception.pth")
    np.testing.assert_array_equal(load_classifier(tmp_path / "pt_inception.pth"), w.numpy())
    np.savez(tmp_path / "w.npz", weight=w.numpy().T)  # 2048×1008 as the TF graph stores it
    np.testing.assert_array_equal(load_classifier(tmp_path / "w.npz"), w.numpy())
    torch.save({"conv.weight": torch.ones(3)}, tmp_path / "other.pth")
    with pytest.raises(MetricsError, match="no classifier weight over the 2048 pool features"):
        load_classifier(tmp_path / "other.pth")

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    torch.save({"fc.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(MetricsError, match="never unpickled"):
        load_classifier(tmp_path / "evil.pth")
    assert not (tmp_path / "ran").exists()


def test_epg_evaluate_reports_is_when_given_the_weight_and_says_why_not_otherwise(tmp_path, capsys):
    images = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=images)
    w = np.random.default_rng(2).normal(size=(1008, 2048)).astype(np.float32) * 0.05
    np.savez(tmp_path / "w.npz", weight=w)
    parser = argparse.ArgumentParser(prog="epg")
    add_parser(parser.add_subparsers())
    base = f"evaluate {tmp_path / 's.npz'} --ref {tmp_path / 's.npz'} --cache-dir {tmp_path / 'c'}".split()
    args = parser.parse_args(base + ["--json", str(tmp_path / "r.json"), "--is-weights", str(tmp_path / "w.npz")])
    assert args.func(args) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    pool = load_inception().features(torch.from_numpy(images).permute(0, 3, 1, 2)).pool
    assert results["inception_score"] == pytest.approx(inception_score(class_probabilities(pool, w)), rel=1e-6)
    assert "IS" in capsys.readouterr().out
    args = parser.parse_args(base)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "IS         n/a" in out and "pass --is-weights" in out
