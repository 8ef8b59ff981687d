"""The `epg` command line: sampling to ADM .npz, reproducibility under torchrun, and clear errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from epg.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from engine_worker import Synthetic, tiny_config  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from epg.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    Trainer(tiny_config(**{"train.steps": 3, "model.dec_width": 48}), run, dataset=Synthetic()).fit()
    return run


def test_sample_writes_adm_npz_and_grid_reproducibly(trained_run, tmp_path):
    args = ["sample", "--checkpoint", str(trained_run), "--num", "12", "--batch-size", "5",
            "--sample.steps", "4", "--cfg_scale", "2.0"]
    assert main([*args, "--out", str(tmp_path / "a.npz")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["arr_0"].dtype == np.uint8 and a["arr_0"].shape == (12, 32, 32, 1)
    assert sorted(a["arr_1"].tolist()) == sorted(list(range(10)) + _leftover(a["arr_1"]))
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert (tmp_path / "a_grid.png").is_file()
    assert main([*args, "--out", str(tmp_path / "pngs")]) == 0
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 12


def _leftover(labels):
    # 12 balanced labels over 10 classes: each class once plus two distinct extra classes
    counts = np.bincount(labels, minlength=10)
    assert counts.min() == 1 and counts.max() == 2 and counts.sum() == 12
    return [c for c in range(10) if counts[c] == 2]


@pytest.mark.slow
def test_sample_under_torchrun_equals_one_process(trained_run, tmp_path):
    base = [sys.executable, "-m", "epg", "sample", "--checkpoint", str(trained_run), "--num-images", "6",
            "--sample.steps", "3"]
    subprocess.run([*base, "--out", str(tmp_path / "one.npz")], check=True, env=ENV, capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29533", "-m", "epg", *base[3:], "--out", str(tmp_path / "two.npz")], env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])


@pytest.mark.parametrize("argv,needle", [
    (["pretrain", "--preset", "fmnist-tinny"], "did you mean 'fmnist-tiny'"),
    (["pretrain", "--preset", "fmnist-tiny", "--model.enc_dept", "3"], "did you mean 'model.enc_depth'"),
    (["pretrain", "--preset", "fmnist-tiny", "--data", "/nonexistent/path"], "/nonexistent/path"),
    (["sample", "--checkpoint", "/nonexistent/ckpt", "--out", "x.npz"], "/nonexistent/ckpt"),
    (["finetune", "--preset", "fmnist-tiny", "--init", "/nonexistent/stage1"], "/nonexistent/stage1"),
])
def test_bad_input_gives_one_clear_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("epg: error:") and needle in err[0]


def test_sampling_a_stage1_checkpoint_is_refused(tmp_path, capsys):
    from epg.engine.trainer import Trainer

    Trainer(tiny_config("pretrain", **{"train.steps": 1}), tmp_path, dataset=Synthetic()).fit()
    assert main(["sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 2
    assert "no decoder" in capsys.readouterr().err


def test_presets_lists_every_row(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "epg-xl-16-in256" in out and "583.0M" in out and "fmnist-tiny" in out
