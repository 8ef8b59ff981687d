"""The Python API (`epg.load` → Pipeline) and the shareable model folder (`epg export --format hf`)."""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import epg
from epg.cli import main
from epg.config import ConfigError
from epg.engine.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from engine_worker import Synthetic, tiny_config  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def _run(run_dir: Path, stage: str = "diffusion") -> Path:
    torch.set_num_threads(1)
    Trainer(tiny_config(stage, **{"train.steps": 2, "train.ckpt_every": 2}), run_dir, dataset=Synthetic()).fit()
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("api") / "run")


def test_sample_is_uint8_nhwc_deterministic_and_numpy_or_pil(run):
    pipe = epg.load(run)
    a = pipe.sample([3, 1, 4], steps=4, seed=5)
    assert a.shape == (3, 32, 32, 1) and a.dtype == np.uint8
    assert np.array_equal(a, pipe.sample([3, 1, 4], steps=4, seed=5))
    assert not np.array_equal(a, pipe.sample([3, 1, 4], steps=4, seed=6))
    # image i depends only on (seed, i): the first two of a longer request are the same images
    assert np.array_equal(a[:2], pipe.sample([3, 1], steps=4, seed=5))
    pil = pipe.sample([3, 1, 4], steps=4, seed=5, output="pil")
    assert all(isinstance(im, Image.Image) and im.mode == "L" for im in pil)
    assert np.array_equal(np.stack([np.asarray(im) for im in pil])[..., None], a)


def test_sample_equals_epg_sample_with_the_same_labels(run, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(run), "--num", "6", "--out", str(out), "--seed", "2",
                 "--sample.steps", "4", "--device", "cpu"]) == 0
    with np.load(out) as d:
        images, labels = d["arr_0"], d["arr_1"]
    assert np.array_equal(epg.load(run).sample(labels.tolist(), steps=4, seed=2), images)


def test_sample_refuses_bad_requests_in_words(run, tmp_path):
    pipe = epg.load(run)
    with pytest.raises(ConfigError, match="labels must lie in 0…9"):
        pipe.sample([10])
    with pytest.raises(ConfigError, match="class-conditional"):
        pipe.sample(num=3)
    with pytest.raises(ConfigError, match="sample.sampler"):
        pipe.sample([1], sampler="dpm")
    with pytest.raises(ConfigError, match="output must be"):
        pipe.sample([1], steps=2, output="tensor")
    stage1 = epg.load(_run(tmp_path / "rcm", "pretrain"))
    with pytest.raises(ConfigError, match="stage-1 network"):
        stage1.sample([1])


def test_encode_reads_ln_cls_at_the_given_sigma(run, tmp_path):
    images = Synthetic().images[:8]
    for path in (run, _run(tmp_path / "rcm", "pretrain")):
        pipe = epg.load(path)
        feats = pipe.encode(images.permute(0, 2, 3, 1).numpy())
        assert feats.shape == (8, 32) and feats.dtype == torch.float32
        # exactly: x0 + σ'ε with ε drawn from the seed, through c_in and c_noise at σ' = σ·H/64
        from epg.noise import c_in, c_noise
        from epg.pixels import normalize

        s = 2.0 * 32 / 64
        eps = torch.randn((8, 1, 32, 32), generator=torch.Generator().manual_seed(4))
        sig = torch.full((8,), s)
        with torch.no_grad():
            ref = pipe.net.encoder(c_in(sig.view(-1, 1, 1, 1)) * (normalize(images) + s * eps), c_noise(sig))[0][:, 0]
        torch.testing.assert_close(pipe.encode(images, sigma=2.0, seed=4), ref, atol=1e-6, rtol=0)
        # the default σ is σ_min, and the features come from the images given (not from a cached batch)
        eps0 = torch.randn((8, 1, 32, 32), generator=torch.Generator().manual_seed(0))
        s0 = torch.full((8,), 0.002 * 0.5)
        with torch.no_grad():
            ref0 = pipe.net.encoder(c_in(s0.view(-1, 1, 1, 1)) * (normalize(images) + 0.001 * eps0), c_noise(s0))[0]
        torch.testing.assert_close(feats, ref0[:, 0], atol=1e-6, rtol=0)
        assert torch.equal(pipe.encode(images, sigma=2.0, seed=1), pipe.encode(images, sigma=2.0, seed=1))
        assert (pipe.encode(images, sigma=2.0) - feats).abs().max() > 0.05
    with pytest.raises(ConfigError, match="this model takes"):
        pipe.encode(np.zeros((2, 28, 28, 1), np.uint8))


def test_model_folder_export_then_load_samples_bit_identically(run, tmp_path, capsys):
    evaluation = {"fid": 123.456, "num_samples": 1000, "num_ref": 1000, "ref": "fmnist-test@32"}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    out = tmp_path / "model"
    assert main(["export", str(run), str(out), "--eval", str(tmp_path / "eval.json")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert set(config) == {"_format", "preset", "stage", "model", "noise", "sample"}
    assert config["_format"] == "epg-model-v1" and config["noise"]["normalization"] == "minus_one"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: epg\n")
    assert "FID **123.46** on 1000 samples" in card and "| `fmnist-tiny` | diffusion |" in card
    assert "epg finetune --objective diffusion --preset fmnist-tiny" in card and "--train.steps 2" in card
    # the weights are the run's EMA, and sampling the folder gives the run's images bit for bit
    from safetensors.torch import load_file

    ema = load_file(run / "checkpoints" / "step-00000002" / "ema.safetensors")
    folder = load_file(out / "model.safetensors")
    assert set(folder) == set(ema) and all(torch.equal(folder[k], ema[k]) for k in ema)
    labels = list(range(10))
    assert np.array_equal(epg.load(out).sample(labels, seed=3, steps=4), epg.load(run).sample(labels, seed=3, steps=4))
    for src, name in ((run, "a.npz"), (out, "b.npz")):
        assert main(["sample", "--checkpoint", str(src), "--num", "4", "--out", str(tmp_path / name),
                     "--sample.steps", "3", "--device", "cpu"]) == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])
    assert main(["export", str(run), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    _run(Path("runs/demo/diffusion"))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documented example, verbatim
    assert namespace["images"].shape[0] == 3 and namespace["features"].shape[0] == 3
    assert os.path.isfile("grid.png")
