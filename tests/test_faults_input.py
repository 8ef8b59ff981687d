"""Bad input (issue 17, cases 11–13): one clear line naming the thing and what to do, never a traceback."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from epg.cli import main
from epg.data.prepare import format_report, prepare_folder


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("epg: error:"), err
    return err[0]


# ---------------------------------------------------------------- case 11: config values and the command line
@pytest.mark.parametrize("argv,needle", [
    (["config", "--train.ckpt_every", "0"], "train.ckpt_every = 0 must be a finite number > 0"),
    (["config", "--train.log_every", "0"], "train.log_every = 0 must be"),
    (["config", "--lr", "-1"], "optim.lr = -1.0 must be a finite number ≥ 0"),
    (["config", "--lr", "nan"], "optim.lr = nan must be a finite number"),
    (["config", "--optim.betas", "0.9"], "optim.betas = (0.9,) must be two numbers in [0, 1)"),
    (["config", "--data.workers", "-1"], "data.workers = -1 must be a finite number ≥ 0"),
    (["config", "--sample.steps", "0"], "sample.steps = 0 must be"),
    (["config", "--stage", "bogus"], "--stage 'bogus' is not one of pretrain, diffusion, consistency"),
    (["config", "--train.device", "gpu"], "train.device = 'gpu' is not one of"),
    (["pretrain", "--preset", "fmnist-tiny", "--train.log_every", "0"], "train.log_every"),
    (["finetune", "--preset", "fmnist-tiny", "--train.ckpt_every", "0"], "train.ckpt_every"),
    (["sample", "--checkpoint", "run", "--out", "x.npz", "--batch-size", "0"], "--batch-size must be a positive"),
    (["sample", "--checkpoint", "run", "--out", "x.npz", "--num-images", "0"], "--num-images must be a positive"),
])
def test_case11_bad_values_are_one_line_naming_the_key(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert needle in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.parametrize("argv", [
    ["pretrain", "--preset", "fmnist-tiny", "--train.device", "cuda", "--run-dir", "r"],
    ["sample", "--checkpoint", "run", "--out", "x.npz", "--device", "cuda"],
])
def test_case11_cuda_on_a_machine_without_it(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the machine has no CUDA GPU
    assert main(argv) == 2
    assert "no usable CUDA GPU" in _one_error_line(capsys) and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- case 12: `epg prepare`
def _tree(root, classes=("a", "b")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_case12_a_file_name_that_is_not_utf8_is_prepared(tmp_path, capsys):
    _tree(tmp_path / "src")
    odd = os.fsdecode(b"caf\xe9-latin1.png")  # a name from an old Latin-1 file system
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "src" / "a" / odd, format="PNG")
    (tmp_path / "src" / "b" / os.fsdecode(b"bad\xff.png")).write_bytes(b"not a png")
    report = prepare_folder(tmp_path / "src", tmp_path / "out", 8, progress=False)
    assert report["images_written"] == 5 and len(report["skipped"]) == 1
    print(format_report(report))  # the summary prints too (the odd byte shown as �)
    assert "bad�.png" in capsys.readouterr().out


def test_case12_a_class_level_symlink_loop_is_not_a_class(tmp_path):
    _tree(tmp_path / "src")
    os.symlink(tmp_path / "src", tmp_path / "src" / "zz-loop")
    report = prepare_folder(tmp_path / "src", tmp_path / "out", 8, progress=False)
    assert report["images_written"] == 4  # no duplicates
    assert any("zz-loop" in note and "loop" in note for note in report["notes"])
    assert "zz-loop" in format_report(report)


def test_case12_an_empty_class_folder_is_reported(tmp_path):
    _tree(tmp_path / "src")
    (tmp_path / "src" / "c-empty").mkdir()
    report = prepare_folder(tmp_path / "src", tmp_path / "out", 8, progress=False)
    assert report["images_written"] == 4
    assert "note: class folder c-empty holds no image" in format_report(report)


# ---------------------------------------------------------------- case 13: `epg evaluate`
def test_case13_samples_of_another_size_than_the_reference_are_warned_about(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "samples.npz", arr_0=rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8))
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (6, 32, 32, 1), dtype=np.uint8))
    argv = ["evaluate", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"), "--cache-dir",
            str(tmp_path / "cache")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("epg evaluate: warning:")]
    assert len(warning) == 1
    assert "the samples are 64×64 RGB but the reference" in warning[0] and "is 32×32 grey" in warning[0]
    assert "FID" in captured.out
