"""open_dataset over every source: Fashion-MNIST, ImageFolder, .npz, packed; errors; DataLoader workers."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from epg.data import DataError, ImageDataset, open_dataset, prepare_folder

FMNIST = "/usr/share/datasets/fashion-mnist"


def _idx_payload(name: str, header: int) -> np.ndarray:
    with gzip.open(f"{FMNIST}/{name}.gz") as file:
        return np.frombuffer(file.read(), dtype=np.uint8)[header:]


def _check_interface(dataset: ImageDataset, channels: int, resolution: int) -> None:
    image, label = dataset[len(dataset) - 1]
    assert image.dtype == torch.uint8 and image.is_contiguous()
    assert image.shape == (channels, resolution, resolution)
    assert isinstance(label, int)
    assert (dataset.channels, dataset.resolution) == (channels, resolution)


def test_fmnist_splits_shapes_and_pixels():
    train, test = open_dataset("fmnist"), open_dataset("fmnist", split="test")
    assert (len(train), len(test)) == (60_000, 10_000)
    _check_interface(train, 1, 28)
    assert train.num_classes == 10 and len(train.class_names) == 10
    raw_images = _idx_payload("t10k-images-idx3-ubyte", 16).reshape(-1, 28, 28)
    raw_labels = _idx_payload("t10k-labels-idx1-ubyte", 8)
    for i in (0, 1234, 9999):
        image, label = test[i]
        assert np.array_equal(image[0].numpy(), raw_images[i]) and label == raw_labels[i]
    labels = {test[i][1] for i in range(0, 10_000, 97)}
    assert labels == set(range(10))


def test_fmnist_padded_to_32_keeps_the_image_in_the_centre():
    native, padded = open_dataset("fmnist", "test"), open_dataset("fmnist", "test", resolution=32)
    assert padded.resolution == 32 and open_dataset("fmnist", resolution=28).resolution == 28
    for i in (0, 17):
        small, label = native[i]
        big, big_label = padded[i]
        assert big.shape == (1, 32, 32) and big_label == label
        assert torch.equal(big[:, 2:30, 2:30], small)
        border = big.clone()
        border[:, 2:30, 2:30] = 0
        assert not border.any()


def test_fmnist_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        open_dataset("fmnist", fmnist_dir=str(tmp_path))
    monkeypatch.setenv("EPG_FMNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="EPG_FMNIST_DIR"):
        open_dataset("fmnist")
    with pytest.raises(DataError, match="splits"):
        open_dataset("fmnist", split="val", fmnist_dir=FMNIST)
    with pytest.raises(DataError, match="28×28"):
        open_dataset("fmnist", resolution=64, fmnist_dir=FMNIST)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match="truncated"):
        open_dataset("fmnist")


def _write_folder(root, sizes: list[tuple[int, int]]) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    pixels: dict[str, list[np.ndarray]] = {}
    for k, (width, height) in enumerate(sizes):
        name = ["cat", "dog"][k % 2]
        (root / name).mkdir(parents=True, exist_ok=True)
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / name / f"{k:03d}.png")
        pixels.setdefault(name, []).append(array)
    return pixels


def test_image_folder(tmp_path):
    pixels = _write_folder(tmp_path, [(16, 16)] * 5)
    Image.fromarray(np.full((16, 16), 7, np.uint8), "L").save(tmp_path / "dog" / "grey.webp", lossless=True)
    dataset = open_dataset(str(tmp_path))
    _check_interface(dataset, 3, 16)
    assert dataset.class_names == ["cat", "dog"] and dataset.num_classes == 2
    grey = np.full((16, 16, 3), 7)
    expected = [(a, 0) for a in pixels["cat"]] + [(a, 1) for a in pixels["dog"]] + [(grey, 1)]
    assert len(dataset) == len(expected)
    for i, (array, label) in enumerate(expected):
        image, read_label = dataset[i]
        assert np.array_equal(image.permute(1, 2, 0).numpy(), array) and read_label == label
    assert open_dataset(str(tmp_path), resolution=8)[0][0].shape == (3, 8, 8)

    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        open_dataset(str(tmp_path))[3]  # after cat/000, 002, 004


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders with images"):
        open_dataset(str(tmp_path / "empty"))
    _write_folder(tmp_path / "wide", [(20, 10)])
    with pytest.raises(DataError, match="not square"):
        open_dataset(str(tmp_path / "wide"))
    assert open_dataset(str(tmp_path / "wide"), resolution=8)[0][0].shape == (3, 8, 8)
    with pytest.raises(DataError, match="no dataset at"):
        open_dataset(str(tmp_path / "missing"))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz(tmp_path, compressed):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 4, 2, 2, 1, 0])
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "labelled.npz", images, labels)
    dataset = open_dataset(str(tmp_path / "labelled.npz"))
    _check_interface(dataset, 3, 8)
    assert dataset.num_classes == 5 and dataset.class_names is None
    for i in range(6):
        image, label = dataset[i]
        assert np.array_equal(image.permute(1, 2, 0).numpy(), images[i]) and label == labels[i]
    save(tmp_path / "grey.npz", arr_0=images[..., :1])
    grey = open_dataset(str(tmp_path / "grey.npz"), resolution=8)
    assert grey.num_classes == 0 and grey[3][1] == 0
    assert torch.equal(grey[3][0], torch.from_numpy(images[3, :, :, 0])[None])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"arr_0": np.zeros((2, 8, 8, 3), np.float32)}, "arr_0 is float32"),
        ({"arr_0": np.zeros((2, 8, 8), np.uint8)}, r"arr_0 is uint8 \(2, 8, 8\)"),
        ({"arr_0": np.zeros((2, 8, 6, 3), np.uint8)}, "H = W"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, "has no arr_0"),
        ({"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.zeros(3, np.int64)}, "arr_1"),
        ({"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.zeros(2, np.float32)}, "arr_1"),
    ],
)
def test_bad_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        open_dataset(str(tmp_path / "bad.npz"))


def test_npz_other_errors(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="cannot read"):
        open_dataset(str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "ok.npz", np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="epg prepare"):
        open_dataset(str(tmp_path / "ok.npz"), resolution=16)


@pytest.fixture()
def packed(tmp_path):
    _write_folder(tmp_path / "raw", [(24, 20), (20, 24), (30, 30), (12, 40), (16, 16)] * 2)
    prepare_folder(tmp_path / "raw", tmp_path / "packed", 16, shard_size=3, progress=False)
    return tmp_path / "packed"


def test_packed_errors(packed):
    with pytest.raises(DataError, match="16×16 images, not 32×32"):
        open_dataset(str(packed), resolution=32)
    (packed / "shard-00002.npy").unlink()
    with pytest.raises(DataError, match="shard-00002.npy"):
        open_dataset(str(packed))
    (packed / "index.json").write_text("{")
    with pytest.raises(DataError, match="index.json"):
        open_dataset(str(packed))


def test_datasets_pickle_and_load_in_workers(packed, tmp_path):
    np.savez(tmp_path / "s.npz", np.arange(10 * 16 * 16 * 3, dtype=np.uint8).reshape(10, 16, 16, 3))
    sources = [str(packed), str(tmp_path / "raw"), str(tmp_path / "s.npz")]
    for dataset in [open_dataset(s, resolution=16) for s in sources] + [open_dataset("fmnist", "test")]:
        direct = [dataset[i] for i in range(10)]  # opens memory maps / arrays in this process
        clone = pickle.loads(pickle.dumps(dataset))
        assert all(torch.equal(clone[i][0], direct[i][0]) for i in range(10))
    dataset = open_dataset(str(packed))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, shuffle=False)
    images = torch.cat([batch for batch, _ in loader])
    labels = torch.cat([batch for _, batch in loader])
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(len(dataset))]))
    assert labels.tolist() == [dataset[i][1] for i in range(len(dataset))]
