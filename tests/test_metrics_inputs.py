"""Samples and references (METHOD.md §7): each bad input gives one clear MetricsError; datasets by name."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from epg.metrics import MetricsError, fid_against, reference_statistics
from epg.metrics.cli import add_parser
from epg.metrics.sources import open_images


def parse(argv):
    parser = argparse.ArgumentParser(prog="epg")
    add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"arr_0": np.zeros((2, 8, 8, 3), np.float32)}, "float32 values, not uint8"),
        ({"arr_0": np.zeros((8, 8, 3), np.uint8)}, "not the 4-D N×H×W×C"),
        ({"arr_0": np.zeros((2, 8, 8, 4), np.uint8)}, r"last axis \(4\) is not 1 or 3 channels"),
        ({"arr_0": np.zeros((2, 3, 8, 8), np.uint8)}, r"NCHW instead of NHWC"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, "has no arr_0"),
    ],
)
def test_bad_npz_names_the_file_and_the_fix(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(MetricsError, match=message) as info:
        open_images(path)
    assert str(path) in str(info.value)


def test_reference_npz_without_images_or_statistics(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(MetricsError, match="neither arr_0 .* nor mu/sigma"):
        reference_statistics(path)


def test_corrupt_npz_and_missing_paths(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"this is not a zip archive")
    with pytest.raises(MetricsError, match="not a readable .npz"):
        open_images(corrupt)
    with pytest.raises(MetricsError, match="no such .npz"):
        open_images(tmp_path / "missing.npz")
    with pytest.raises(MetricsError, match="no such file or folder"):
        open_images(tmp_path / "missing" / "samples")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MetricsError, match="neither an .npz"):
        open_images(tmp_path / "notes.txt")


def test_bad_arrays_and_tensors():
    with pytest.raises(MetricsError, match="samples holds float64 values"):
        open_images(np.zeros((2, 8, 8, 3)))
    with pytest.raises(MetricsError, match="uint8 N×C×H×W"):
        fid_against(torch.zeros(2, 3, 8, 8), "fmnist-test")


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(MetricsError, match="holds no .png/.jpg/.jpeg/.webp images"):
        open_images(tmp_path)


def test_corrupt_image_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(MetricsError, match=r"cannot read image .*b\.png"):
        list(open_images(tmp_path).batches(4))


def test_folder_images_must_share_one_size(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 8)).save(tmp_path / "b.jpg")
    with pytest.raises(MetricsError, match="must share one size"):
        list(open_images(tmp_path).batches(4))


def test_folder_is_recursive_sorted_and_rgb(tmp_path):
    (tmp_path / "z").mkdir()
    Image.new("L", (8, 8), color=200).save(tmp_path / "z" / "grey.png")
    Image.new("RGB", (8, 8), color=(1, 2, 3)).save(tmp_path / "a.png")
    (batch,) = open_images(tmp_path).batches(4)
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 8, 8)
    assert batch[0, :, 0, 0].tolist() == [1, 2, 3] and batch[1, :, 0, 0].tolist() == [200, 200, 200]


def test_asking_for_more_reference_images_than_exist(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(MetricsError, match="holds 2 images; cannot use 5"):
        reference_statistics(path, num_ref=5)


def test_stats_file_without_count_refuses_num_ref(tmp_path):
    path = tmp_path / "stats.npz"
    np.savez(path, mu=np.zeros(4), sigma=np.eye(4))
    assert reference_statistics(path).count is None
    with pytest.raises(MetricsError, match="unrecorded number of images, not 10"):
        reference_statistics(path, num_ref=10)


def test_dataset_names_open_through_epg_data():
    test = open_images("fmnist-test").take(4)
    assert test.count == 4 and test.identity() == "dataset:fmnist:test"
    (batch,) = test.batches(8)
    assert batch.dtype == torch.uint8 and batch.shape == (4, 1, 28, 28)
    assert open_images("fmnist").identity() == "dataset:fmnist:train"
    with pytest.raises(MetricsError, match="nor a dataset epg opens"):
        open_images("no-such-dataset")


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=np.zeros((2, 8, 8, 3), np.int16))
    args = parse(["evaluate", str(path), "--ref", "fmnist-test"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("epg evaluate: error: ") and "int16" in err
    with pytest.raises(SystemExit):
        parse(["evaluate", str(path), "--ref", "fmnist-test", "--num-ref", "0"])
