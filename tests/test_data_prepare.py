"""`epg prepare` on a small fake ImageNet tree: ADM crop, labels, bad files, round trip, resume, CLI."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
from PIL import Image

from epg.data import DataError, PackedDataset, open_dataset, prepare_folder
from epg.data.cli import add_parser

RES = 32
WNIDS = ["n01440764", "n01443537", "n01484850"]
BAD = {"n01440764/e_zero.jpg": "empty", "n01443537/d_corrupt.png": "unreadable",
       "n01443537/e_truncated.jpg": "truncated"}  # fmt: skip


def _noise(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _opaque_or_clear(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Alpha of only 0 or 255 makes compositing onto white exact, whatever the rounding.
    return np.where(rng.random((height, width)) < 0.3, 0, 255).astype(np.uint8)


def make_tree(root, seed: int = 0) -> None:
    """3 wnid classes, mixed formats and sizes, one file of each bad kind and each convertible mode."""
    rng = np.random.default_rng(seed)
    a, b, c = (root / wnid for wnid in WNIDS)
    for folder in (a, b, c / "sub"):
        folder.mkdir(parents=True)
    Image.fromarray(_noise(rng, 97, 150)).save(a / "a_rgb.png")
    Image.fromarray(_noise(rng, 64, 80)).save(a / "b_rgb.jpg", quality=90)
    Image.fromarray(_noise(rng, 90, 70, 1), "L").save(a / "c_grey.jpg")
    Image.fromarray(_noise(rng, 64, 64, 4), "CMYK").save(a / "d_cmyk.jpg")
    (a / "e_zero.jpg").write_bytes(b"")
    sixteen = np.zeros((48, 64), dtype=np.uint16)
    sixteen[:, :32], sixteen[:, 32:] = 64 * 257, 200 * 257
    sixteen[:6] = rng.integers(0, 65536, (6, 64), dtype=np.uint16)
    Image.fromarray(sixteen).save(b / "a_16bit.png")  # uint16 2-D → mode I;16
    palette = Image.fromarray(rng.integers(0, 8, (40, 40), dtype=np.uint8), "P")
    palette.putpalette(list(rng.integers(0, 256, 24, dtype=np.uint8)))
    palette.save(b / "b_palette.png", transparency=3)
    Image.fromarray(_noise(rng, 50, 100)).save(b / "c_rgb.webp", lossless=True)
    (b / "d_corrupt.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    Image.fromarray(_noise(rng, 120, 120)).save(buffer, "JPEG")
    (b / "e_truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    rgba = np.dstack([_noise(rng, 50, 50), _opaque_or_clear(rng, 50, 50)])
    Image.fromarray(rgba, "RGBA").save(c / "a_rgba.png")
    grey_alpha = np.dstack([_noise(rng, 40, 33, 1), _opaque_or_clear(rng, 40, 33)])
    Image.fromarray(grey_alpha, "LA").save(c / "b_la.png")
    Image.fromarray(_noise(rng, 200, 256)).save(c / "sub" / "c_rgb.jpeg")
    (c / "notes.txt").write_text("not an image")


def reference_rgb(path) -> Image.Image:
    """What each test file should look like in 8-bit RGB, written independently of epg."""
    with Image.open(path) as image:
        image.load()
        if image.mode == "I;16":
            grey = np.round(np.asarray(image).astype(np.float64) / 257.0).astype(np.uint8)
            return Image.fromarray(grey, "L").convert("RGB")
        if image.mode in ("RGBA", "LA") or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA"))
            return Image.fromarray(np.where(rgba[..., 3:] == 255, rgba[..., :3], 255).astype(np.uint8))
        return image.convert("RGB")


def reference_adm(image: Image.Image, res: int) -> np.ndarray:
    """ADM's centre crop, spelled out: BOX halvings, one BICUBIC resize, a central PIL crop."""
    width, height = image.size
    while min(width, height) >= 2 * res:
        width, height = width // 2, height // 2
        image = image.resize((width, height), Image.BOX)
    scale = res / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.BICUBIC)
    left, top = (image.width - res) // 2, (image.height - res) // 2
    return np.asarray(image.crop((left, top, left + res, top + res)))


def good_files(root) -> list[tuple[str, int]]:
    """(relative path, label) of the readable images, in the order epg packs them."""
    files = []
    for label, wnid in enumerate(WNIDS):
        for path in sorted((root / wnid).rglob("*")):
            relative = str(path.relative_to(root))
            if path.suffix in (".png", ".jpg", ".jpeg", ".webp") and relative not in BAD:
                files.append((relative, label))
    return files


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    make_tree(root)
    out = tmp_path_factory.mktemp("packed")
    argv = ["prepare", "imagenet", "--src", str(root), "--res", str(RES), "--out", str(out)]
    assert run_cli(argv + ["--workers", "1", "--shard-size", "4", "--quiet"]) == 0
    return root, out


def test_prepare_counts_labels_and_classes(prepared):
    root, out = prepared
    dataset = open_dataset(str(out))
    assert isinstance(dataset, PackedDataset)
    expected = good_files(root)
    assert len(dataset) == len(expected) == 10
    assert [dataset[i][1] for i in range(len(dataset))] == [label for _, label in expected]
    assert (dataset.num_classes, dataset.channels, dataset.resolution) == (3, 3, RES)
    assert dataset.class_names == WNIDS
    assert json.loads((out / "classes.json").read_text()) == WNIDS


def test_adm_centre_crop_of_a_known_image(prepared):
    root, out = prepared
    image = np.asarray(Image.open(root / WNIDS[0] / "a_rgb.png"))
    # Computed by hand for 150×97 at 32: one BOX halving to 75×48, BICUBIC to 50×32, columns 9..40.
    halved = Image.fromarray(image).resize((75, 48), Image.BOX)
    expected = np.asarray(halved.resize((50, 32), Image.BICUBIC))[:, 9:41]
    image0, _ = open_dataset(str(out))[0]
    assert np.array_equal(image0.permute(1, 2, 0).numpy(), expected)


def test_packed_round_trip_equals_reference_pipeline(prepared):
    root, out = prepared
    dataset = open_dataset(str(out), resolution=RES)
    for i, (relative, label) in enumerate(good_files(root)):
        image, read_label = dataset[i]
        assert image.dtype.is_floating_point is False and image.is_contiguous()
        assert read_label == label
        expected = reference_adm(reference_rgb(root / relative), RES)
        assert np.array_equal(image.permute(1, 2, 0).numpy(), expected), relative


def test_sixteen_bit_is_scaled_not_clipped(prepared):
    root, out = prepared
    index = [relative for relative, _ in good_files(root)].index(f"{WNIDS[1]}/a_16bit.png")
    image, _ = open_dataset(str(out))[index]
    # Rows 20+ come from the flat halves (64·257 and 200·257), away from the noisy top rows; Pillow's own
    # conversion would clip both to 255.
    assert abs(int(image[0, 20, 0]) - 64) <= 1 and abs(int(image[0, 20, -1]) - 200) <= 1
    assert (image[0] == image[1]).all() and (image[1] == image[2]).all()


def test_skipped_files_report(prepared, capsys):
    root, out = prepared
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["files_found"] == 13 and report["images_written"] == 10
    assert report["skipped_by_reason"] == {"empty": 1, "truncated": 1, "unreadable": 1}
    assert {entry["path"]: entry["reason"] for entry in report["skipped"]} == BAD
    assert report["converted_to_rgb_by_mode"] == {"CMYK": 1, "I;16": 1, "L": 1, "LA": 1, "P": 1, "RGBA": 1}


def test_cli_prints_summary(tmp_path, capsys):
    make_tree(tmp_path / "raw", seed=1)
    argv = ["prepare", "folder", "--src", str(tmp_path / "raw"), "--res", "16", "--out", str(tmp_path / "o")]
    assert run_cli(argv + ["--workers", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"prepared 10 of 13 images of {tmp_path / 'raw'} at 16×16" in printed
    assert "skipped 3 files (empty 1, truncated 1, unreadable 1)" in printed
    assert "n01443537/e_truncated.jpg: truncated" in printed
    assert "prepare_report.json" in printed


def _snapshot(out) -> dict[str, bytes]:
    names = ["index.json", "labels.npy", "classes.json", "prepare_report.json"]
    names += [p.name for p in sorted(out.glob("shard-*"))]
    return {name: (out / name).read_bytes() for name in names}


class _Crash(Exception):
    pass


def test_interrupted_preparation_resumes_without_redoing_shards(prepared, tmp_path):
    root, _ = prepared
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    prepare_folder(root, clean, RES, workers=2, shard_size=2, progress=False)  # 13 files → 7 shards

    def crash_after_three(shard: int) -> None:
        if shard == 2:
            raise _Crash

    with pytest.raises(_Crash):
        prepare_folder(root, resumed, RES, shard_size=2, on_shard_done=crash_after_three, progress=False)
    with pytest.raises(DataError, match="unfinished"):
        open_dataset(str(resumed))
    finished = {p.name: p.stat().st_mtime_ns for p in resumed.glob("shard-*")}
    assert sorted(finished) == [f"shard-0000{k}.{ext}" for k in range(3) for ext in ("json", "npy")]
    # A crash mid-write leaves a temporary file; a crash between a shard and its record leaves a lone shard.
    (resumed / "shard-00003.npy.tmp-12345").write_bytes(b"partial")
    (resumed / "shard-00004.npy").write_bytes(b"written, but its record never was")

    redone: list[int] = []
    prepare_folder(root, resumed, RES, workers=1, shard_size=2, on_shard_done=redone.append, progress=False)
    assert sorted(redone) == [3, 4, 5, 6]
    assert {name: (resumed / name).stat().st_mtime_ns for name in finished} == finished
    assert not list(resumed.glob("*.tmp-*"))
    assert _snapshot(resumed) == _snapshot(clean)

    redone.clear()
    prepare_folder(root, resumed, RES, shard_size=2, on_shard_done=redone.append, progress=False)
    assert redone == [] and _snapshot(resumed) == _snapshot(clean)
    with pytest.raises(DataError, match="other resolution"):
        prepare_folder(root, resumed, 16, shard_size=2, progress=False)


def test_crash_with_worker_processes_resumes(prepared, tmp_path):
    root, _ = prepared
    clean, out = tmp_path / "clean", tmp_path / "resumed"
    prepare_folder(root, clean, RES, shard_size=2, progress=False)

    def crash(shard: int) -> None:
        raise _Crash

    with pytest.raises(_Crash):
        prepare_folder(root, out, RES, workers=2, shard_size=2, on_shard_done=crash, progress=False)
    # How many shards the pool finished before the crash reached the parent depends on the machine's load:
    # what must hold is that exactly the shards with a record are kept and the others are (re)done.
    records = {p.stem for p in out.glob("shard-*.json")}
    assert records
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*") if p.stem in records}
    redone: list[int] = []
    prepare_folder(root, out, RES, workers=2, shard_size=2, on_shard_done=redone.append, progress=False)
    assert len(redone) == 7 - len(records)
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished
    assert _snapshot(out) == _snapshot(clean)


def test_flat_validation_folder_with_label_files(tmp_path):
    rng = np.random.default_rng(2)
    flat = tmp_path / "val"
    flat.mkdir()
    wnids = ["n01440764", "n01484850", "n01440764", "n01443537"]
    for i in range(4):
        Image.fromarray(_noise(rng, 40, 50)).save(flat / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    text = tmp_path / "val.txt"
    text.write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {w}\n" for i, w in enumerate(wnids)))
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 30 40 {w} 5 6 7 8\n" for i, w in enumerate(wnids)
    ))  # fmt: skip
    for labels_file in (text, csv):
        out = tmp_path / f"out_{labels_file.suffix[1:]}"
        prepare_folder(flat, out, 16, val_labels=labels_file, progress=False)
        dataset = open_dataset(str(out))
        assert dataset.class_names == sorted(set(wnids))
        assert [dataset[i][1] for i in range(4)] == [0, 2, 0, 1]

    classes = ["n01440764", "n01443537", "n01484850", "n09999999"]  # e.g. the training set's classes.json
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    argv = ["prepare", "imagenet", "--src", str(flat), "--res", "16", "--out", str(tmp_path / "out_cls")]
    argv += ["--val-labels", str(csv), "--classes", str(tmp_path / "classes.json"), "--quiet"]
    assert run_cli(argv) == 0
    dataset = open_dataset(str(tmp_path / "out_cls"))
    assert dataset.num_classes == 4 and [dataset[i][1] for i in range(4)] == [0, 2, 0, 1]

    text.write_text("ILSVRC2012_val_00000001.JPEG n01440764\n")
    with pytest.raises(DataError, match="3 images .* have no label"):
        prepare_folder(flat, tmp_path / "out_missing", 16, val_labels=text, progress=False)


def test_prepare_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare_folder(tmp_path / "nowhere", tmp_path / "out", 32, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders with images"):
        prepare_folder(tmp_path / "empty", tmp_path / "out", 32, progress=False)
    (tmp_path / "bad" / "n0").mkdir(parents=True)
    (tmp_path / "bad" / "n0" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no image of .* could be read"):
        prepare_folder(tmp_path / "bad", tmp_path / "out_bad", 32, progress=False)
