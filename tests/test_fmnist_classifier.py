"""The sample judge of the benchmarks (benchmarks/fmnist_classifier.py): it learns separable classes,
`class_accuracy` counts what it should, and a report reads its record without training it."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fmnist_classifier as fc  # noqa: E402
from fmnist_classifier import class_accuracy, predict, train  # noqa: E402


def _squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c = a bright 8×8 square in cell c of a 4×4 grid (10 classes), on noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 1, 32, 32), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 4)
        images[i, 0, 8 * r:8 * r + 8, 8 * q:8 * q + 8] = 250
    return images, labels


def test_it_learns_separable_classes_and_class_accuracy_counts_matches():
    torch.set_num_threads(1)
    x, y = _squares(400, 0)
    model = train(x, y, epochs=3, batch=40, lr=5e-3, seed=0, width=4)
    xt, yt = _squares(100, 1)
    assert class_accuracy(model, xt, yt) == 1.0
    # with the labels rotated by one class every prediction is wrong; with half rotated, half are right
    assert class_accuracy(model, xt, (yt + 1) % 10) == 0.0
    half = yt.clone()
    half[::2] = (half[::2] + 1) % 10
    assert class_accuracy(model, xt, half) == 0.5
    assert predict(model, xt).tolist() == yt.tolist()
    with pytest.raises(ValueError, match="as many"):
        class_accuracy(model, xt, yt[:5])


def _never(*a, **k):
    raise AssertionError("the judge was trained")


def test_the_cached_record_wins_then_the_committed_one_of_the_same_settings_then_none(tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "train", _never)
    cache, results = tmp_path / "cache", tmp_path / "results"
    cache.mkdir()
    results.mkdir()
    assert fc.judge_record(cache, results) is None
    (results / "fmnist_classifier.json").write_text(json.dumps({"settings": fc.SETTINGS, "test_accuracy": 0.9}))
    assert fc.judge_record(cache, results)["test_accuracy"] == 0.9
    (cache / f"{fc.cache_key()}.json").write_text(json.dumps({"settings": fc.SETTINGS, "test_accuracy": 0.91}))
    assert fc.judge_record(cache, results)["test_accuracy"] == 0.91
    other = dict(fc.SETTINGS, epochs=fc.SETTINGS["epochs"] + 1)  # a record of another judge is not this one's
    (cache / f"{fc.cache_key()}.json").write_text(json.dumps({"settings": other, "test_accuracy": 0.5}))
    (results / "fmnist_classifier.json").write_text(json.dumps({"settings": other, "test_accuracy": 0.5}))
    assert fc.judge_record(cache, results) is None


def test_the_repository_holds_the_record_of_the_current_judge():
    assert fc.judge_record(Path("/nonexistent"))["settings"] == fc.SETTINGS
