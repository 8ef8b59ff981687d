"""`epg import` / `epg export` against checkpoints saved exactly as the authors' code saves them.

The fixtures (shared/fixtures/official-checkpoints, see its README) hold tiny random networks in the authors'
layout with the outputs the authors' networks compute; importing must reproduce them.
"""

import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from epg.cli import main
from epg.engine import checkpoint as ck
from epg.engine.trainer import Trainer
from epg.interop import official
from epg.interop.cli import fitting_presets
from epg.presets import get_preset

sys.path.insert(0, str(Path(__file__).parent))
from engine_worker import Synthetic  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official-checkpoints"
COMMON = ["--model.channels", "3", "--model.enc_depth", "3", "--model.enc_width", "48"]
ARCH = {  # the fixtures' configs (configs.json) as overrides of fmnist-tiny
    "rcm-tiny": COMMON + ["--model.enc_heads", "3", "--model.proj_hidden", "96", "--model.proj_out", "16"],
    "epg-tiny": COMMON + ["--model.enc_heads", "3", "--model.dec_width", "72", "--model.dec_heads", "3"],
    "epg-tiny-equal-width": COMMON + ["--model.enc_heads", "4", "--model.dec_width", "48", "--model.dec_heads", "4"],
}


def _overrides(name: str) -> dict[str, str]:
    a = ARCH[name]
    return {a[i][2:]: a[i + 1] for i in range(0, len(a), 2)}


def _import(name: str, run: Path, *extra: str) -> Path:
    assert main(["import", str(FIXTURES / name), "--preset", "fmnist-tiny", "--run-dir", str(run),
                 *ARCH[name], *extra]) == 0
    return ck.newest_valid_checkpoint(run / "checkpoints")


class RGB(Synthetic):
    channels = 3

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.images = torch.randint(0, 256, (32, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_stage1_import_reproduces_the_authors_outputs(tmp_path):
    ckpt = _import("rcm-tiny", tmp_path / "run")
    e = load_file(FIXTURES / "rcm-tiny" / "expected.safetensors")
    net, cfg, _ = ck.load_network(tmp_path / "run", prefer_ema=False)
    assert cfg.stage == "pretrain" and cfg.preset == "fmnist-tiny"
    teacher, _, _ = ck.load_network(tmp_path / "run", prefer_ema=False)
    state = ck.read_tensors(ckpt, "state")
    teacher.load_state_dict({k[len("extra.teacher."):]: v for k, v in state.items()})
    with torch.no_grad():
        for model, h_key, z_key in ((net, "h", "z"), (teacher, "target_h", "target_z")):
            torch.testing.assert_close(model.features(e["c_in_x"], e["c_noise"]), e[h_key], atol=1e-5, rtol=0)
            torch.testing.assert_close(model(e["c_in_x"], e["c_noise"]), e[z_key], atol=1e-5, rtol=0)
    # the teacher really is target_model.pth, not a copy of nnet.pth
    assert not torch.equal(teacher.encoder.cls_token, net.encoder.cls_token)


@pytest.mark.parametrize("name", ["epg-tiny", "epg-tiny-equal-width"])
def test_generator_import_reproduces_out_and_ema_out_then_samples(tmp_path, name):
    ckpt = _import(name, tmp_path / "run")
    e = load_file(FIXTURES / name / "expected.safetensors")
    for prefer_ema, key in ((False, "out"), (True, "ema_out")):
        net, cfg, _ = ck.load_network(tmp_path / "run", prefer_ema=prefer_ema)
        with torch.no_grad():
            torch.testing.assert_close(net(e["c_in_x"], e["c_noise"], e["y"]), e[key], atol=1e-5, rtol=0)
    has_projection = any(k.startswith("enc_to_dec.") for k in ck.read_tensors(ckpt, "model"))
    assert has_projection == (name == "epg-tiny")
    meta = json.loads((ckpt / "state.json").read_text())
    assert meta["imported"]["name"] == name and set(meta["imported"]["files"]) == {"nnet.pth", "nnet_ema.pth"}
    out = tmp_path / "samples.npz"
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--num", "4", "--out", str(out),
                 "--sample.steps", "3", "--device", "cpu"]) == 0
    with np.load(out) as d:
        assert d["arr_0"].shape == (4, 32, 32, 3) and d["arr_0"].dtype == np.uint8
        assert len(set(d["arr_1"].tolist())) == 4 and set(d["arr_1"].tolist()) <= set(range(10))  # class-balanced


def test_imported_runs_resume_training_and_initialise_finetuning(tmp_path):
    torch.set_num_threads(1)
    train = {"train.global_batch": "8", "data.workers": "0", "train.precision": "fp32", "train.device": "cpu",
             "train.log_every": "1", "train.ckpt_every": "100"}
    # stage 1, imported at step 5: `epg pretrain` on the same run directory resumes from step 5
    _import("rcm-tiny", tmp_path / "rcm", "--step", "5")
    cfg = get_preset("fmnist-tiny", "pretrain", {**_overrides("rcm-tiny"), **train, "train.steps": "7"})
    trainer = Trainer(cfg, tmp_path / "rcm", dataset=RGB())
    assert trainer.step == 5
    assert trainer.fit().step == 7
    # the imported stage-1 network initialises a generator's encoder (`epg finetune --init RUN`)
    _import("rcm-tiny", tmp_path / "rcm0")
    gen_over = {**_overrides("rcm-tiny"), "model.dec_width": "48", "model.dec_heads": "3", **train,
                "train.steps": "1", "train.init_from": str(tmp_path / "rcm0")}
    gen = Trainer(get_preset("fmnist-tiny", "diffusion", gen_over), tmp_path / "ft", dataset=RGB())
    imported = ck.read_tensors(tmp_path / "rcm0" / "checkpoints" / "step-00000000", "model")
    assert torch.equal(gen.model.net.encoder.pos_embed.detach(), imported["encoder.pos_embed"])
    # an imported generator resumes diffusion training with its EMA
    _import("epg-tiny", tmp_path / "gen")
    cfg = get_preset("fmnist-tiny", "diffusion", {**_overrides("epg-tiny"), **train, "train.steps": "2"})
    trainer = Trainer(cfg, tmp_path / "gen", dataset=RGB())
    ema = load_file(tmp_path / "gen" / "checkpoints" / "step-00000000" / "ema.safetensors")
    assert trainer.step == 0 and torch.equal(trainer.model.ema[0], ema[trainer.model.trained_names[0]])
    assert trainer.fit().step == 2


@pytest.mark.parametrize("name", ["rcm-tiny", "epg-tiny"])
def test_export_then_import_is_bit_identical(tmp_path, name):
    first = _import(name, tmp_path / "a")
    assert main(["export", str(tmp_path / "a"), str(tmp_path / "out"), "--format", "official"]) == 0
    # the exported files carry exactly the authors' keys, shapes and values
    for f in (FIXTURES / name).glob("*.pth"):
        theirs, ours = official.read_pth(f), official.read_pth(tmp_path / "out" / f.name)
        assert set(ours) == set(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    second = _import_path(tmp_path / "out", tmp_path / "b", name)
    for group in ("model", "ema", "state"):
        if (first / f"{group}.safetensors").is_file():
            a, b = ck.read_tensors(first, group), ck.read_tensors(second, group)
            assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), group


def _import_path(src: Path, run: Path, name: str) -> Path:
    assert main(["import", str(src), "--preset", "fmnist-tiny", "--run-dir", str(run), *ARCH[name]]) == 0
    return ck.newest_valid_checkpoint(run / "checkpoints")


def _broken(tmp_path: Path, edit) -> Path:
    state = official.read_pth(FIXTURES / "epg-tiny" / "nnet.pth")
    edit(state)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("edit,expected", [
    (lambda s: s.__setitem__("decoder_blocks.0.skip_lin.weight", s.pop("decoder_blocks.0.skip_linear.weight")),
     ["1 missing: decoder_blocks.0.skip_linear.weight", "1 unexpected: decoder_blocks.0.skip_lin.weight"]),
    (lambda s: s.pop("out_norm.bias"), ["1 missing: out_norm.bias"]),
    (lambda s: s.__setitem__("class_embed.weight", torch.zeros(12, 48)),
     ["1 mis-shaped: class_embed.weight (12, 48) (expected (11, 48))"]),
])
def test_renamed_missing_or_misshaped_keys_are_refused_in_one_line(tmp_path, capsys, edit, expected):
    path = _broken(tmp_path, edit)
    code = main(["import", str(path), "--preset", "fmnist-tiny", "--run-dir", str(tmp_path / "run"),
                 *ARCH["epg-tiny"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(path) in err
    for part in expected:
        assert part in err
    assert not (tmp_path / "run" / "checkpoints").exists()


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pth_with_anything_but_tensors_is_refused_without_unpickling(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save(OrderedDict(cls_token=torch.zeros(1), hook=_Payload(str(marker))), evil)
    plain = tmp_path / "numbers.pth"
    torch.save({"cls_token": torch.zeros(1), "step": 3}, plain)
    for path, words in ((evil, "never unpickles"), (plain, "not tensors")):
        code = main(["import", str(path), "--preset", "fmnist-tiny", "--run-dir", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and words in err and str(path) in err
    assert not marker.exists()
    with pytest.raises(ck.CheckpointError, match="not a readable PyTorch checkpoint"):
        (tmp_path / "junk.pth").write_bytes(b"not a zip")
        official.read_pth(tmp_path / "junk.pth")


def test_the_error_names_the_preset_whose_shapes_fit(tmp_path, capsys):
    cfg = get_preset("fmnist-tiny", "diffusion", {"train.device": "cpu"})
    from epg.nn import build_generator

    torch.manual_seed(0)
    net = build_generator(cfg.model)
    ck.write_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000001", cfg,
                        {"model": net.state_dict(), "ema": net.state_dict()})
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--format", "official"]) == 0
    assert main(["import", str(tmp_path / "out"), "--preset", "fmnist-small", "--run-dir", str(tmp_path / "b")]) == 2
    assert "the shapes fit preset fmnist-tiny" in capsys.readouterr().err
    # a generator without a class table (the first released consistency config) is told the one override
    state = official.read_pth(FIXTURES / "epg-tiny" / "nnet.pth")
    state.pop("class_embed.weight")
    torch.save(state, tmp_path / "uncond.pth")
    assert main(["import", str(tmp_path / "uncond.pth"), "--preset", "fmnist-tiny", "--run-dir", str(tmp_path / "u"),
                 *ARCH["epg-tiny"]]) == 2
    assert "add --model.num_classes 0" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "uncond.pth"), "--preset", "fmnist-tiny", "--run-dir", str(tmp_path / "u"),
                 *ARCH["epg-tiny"], "--model.num_classes", "0"]) == 0
    # paper presets are recognised from their shapes alone (meta tensors: nothing is allocated)
    from epg.nn import build_rcm

    with torch.device("meta"):
        rcm_b = official.to_official(build_rcm(get_preset("rcm-b-16-in256").model).state_dict())
        xl = official.to_official(build_generator(get_preset("epg-xl-16-in256").model).state_dict())
    assert fitting_presets(rcm_b, stage1=True) == ["rcm-b-16-in256"]
    assert fitting_presets(xl, stage1=False) == ["epg-xl-16-in256"]


def test_import_records_the_preset_and_its_pixel_normalisation(tmp_path):
    # The paper presets carry the authors' ImageNet normalisation, which the import writes into the run config.
    for name in ("epg-xl-16-in256", "epg-l-16-in256", "rcm-b-16-in256"):
        assert get_preset(name).noise.normalization == "imagenet"
    ckpt = _import("epg-tiny", tmp_path / "run", "--noise.normalization", "imagenet")
    for cfg in (ck.read_config(ckpt), ck.read_config(tmp_path / "run")):
        assert cfg.noise.normalization == "imagenet" and cfg.preset == "fmnist-tiny" and cfg.stage == "diffusion"


def test_import_refuses_to_overwrite_a_run_and_a_stage1_preset_for_a_generator(tmp_path, capsys):
    _import("epg-tiny", tmp_path / "run")
    assert main(["import", str(FIXTURES / "epg-tiny"), "--preset", "fmnist-tiny", "--run-dir", str(tmp_path / "run"),
                 *ARCH["epg-tiny"]]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["import", str(FIXTURES / "epg-tiny"), "--preset", "rcm-b-16-in256",
                 "--run-dir", str(tmp_path / "x")]) == 2
    assert "stage-1 preset" in capsys.readouterr().err
