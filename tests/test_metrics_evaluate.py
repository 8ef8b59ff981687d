"""Reference caching, ADM precomputed statistics and `epg evaluate` end to end on the real network (§7)."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from epg.metrics import (
    FIDInception,
    default_cache_dir,
    feature_statistics,
    fid_against,
    load_inception,
    reference_statistics,
)
from epg.metrics.cli import add_parser


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def ref(tmp_path, images):
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=images)
    return path


def test_reference_statistics_are_cached(ref, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = reference_statistics(ref, cache_dir=cache)
    assert first.path.parent == cache and first.path.is_file() and first.count == 6
    assert first.mu.shape == (2048,) and first.sigma_s.shape == (2023, 2023)
    assert first.features.shape == (6, 2048)
    written = first.path.stat().st_mtime_ns

    def no_network(*args, **kwargs):
        raise AssertionError("the network ran although the statistics are cached")

    monkeypatch.setattr(FIDInception, "extract", no_network)
    second = reference_statistics(ref, cache_dir=cache)
    assert second.path == first.path and second.path.stat().st_mtime_ns == written
    for name in ("mu", "sigma", "mu_s", "sigma_s", "features"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    with pytest.raises(AssertionError, match="network ran"):
        reference_statistics(ref, num_ref=5, cache_dir=cache)  # another image count is another entry


def test_cache_directory_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("EPG_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "fid"
    monkeypatch.delenv("EPG_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "epg" / "fid"


def test_adm_precomputed_statistics_are_used_for_fid(images, tmp_path):
    samples = torch.from_numpy(images[:3]).permute(0, 3, 1, 2)
    mu, sigma = feature_statistics(load_inception().features(samples).pool)
    adm = tmp_path / "VIRTUAL_ref.npz"
    other = np.zeros((4, 16, 16, 3), np.uint8)  # arr_0 differs: only the shipped mu/sigma can give FID 0
    np.savez(adm, arr_0=other, mu=mu, sigma=sigma)
    cache = tmp_path / "cache"
    assert fid_against(samples, str(adm), cache_dir=cache) == pytest.approx(0.0, abs=1e-3)
    assert not cache.exists()
    # The shipped statistics describe all of arr_0, so a subset is measured instead.
    assert not np.allclose(reference_statistics(adm, num_ref=2, cache_dir=cache).mu, mu)


def test_cli_end_to_end(ref, images, tmp_path, capsys):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    parser = argparse.ArgumentParser(prog="epg")
    add_parser(parser.add_subparsers())
    out = tmp_path / "out" / "metrics.json"
    cache = tmp_path / "cache"
    argv = f"evaluate {folder} --ref {ref} --cache-dir {cache} --json {out} --batch-size 4".split()
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "FID" in table and "sFID" in table and "precision" in table
    results = json.loads(out.read_text())
    assert results["fid"] == pytest.approx(0.0, abs=1e-3) and results["sfid"] == pytest.approx(0.0, abs=1e-3)
    assert results["precision"] == results["recall"] == 1.0
    assert results["num_samples"] == results["num_ref"] == 6
    # The cache entry is itself a valid reference.
    (entry,) = cache.glob("*.npz")
    stats = reference_statistics(entry)
    assert stats.count == 6 and stats.features.shape == (6, 2048) and stats.sigma_s.shape == (2023, 2023)
