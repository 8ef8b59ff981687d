"""The training engine: accumulation, torchrun/gloo equivalence, exact resume after SIGKILL, fallbacks, guards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from epg.engine import checkpoint as ck
from epg.engine.trainer import NonFiniteLossError, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from engine_worker import Synthetic, tiny_config  # noqa: E402

WORKER = str(Path(__file__).parent / "engine_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _train(run_dir, **over):
    torch.set_num_threads(1)
    trainer = Trainer(tiny_config(**over), run_dir, dataset=Synthetic())
    trainer.fit()
    return trainer


def test_gradient_accumulation_equals_full_batch(tmp_path):
    full = _train(tmp_path / "full", **{"train.global_batch": 32, "train.steps": 3})
    accum = _train(tmp_path / "accum", **{"train.global_batch": 32, "train.micro_batch": 8, "train.steps": 3})
    assert accum.batching.accum == 4 and full.batching.accum == 1
    for (k, a), b in zip(full.model.net.state_dict().items(), accum.model.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)
    assert _losses(tmp_path / "full") == pytest.approx(_losses(tmp_path / "accum"), rel=1e-5)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    one = tmp_path / "one"
    subprocess.run([sys.executable, WORKER, "--run-dir", str(one), "--dump", str(tmp_path / "w1"),
                    "train.steps=3"], check=True, env=ENV, capture_output=True)
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", WORKER, "--run-dir", str(two), "--dump", str(tmp_path / "w2"),
                           "train.steps=3"], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w1 = torch.load(f"{tmp_path / 'w1'}.rank0")
    r0, r1 = torch.load(f"{tmp_path / 'w2'}.rank0"), torch.load(f"{tmp_path / 'w2'}.rank1")
    for k in w1:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
        torch.testing.assert_close(r0[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-5)


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_losses(tmp_path):
    args = ["train.steps=10", "train.ckpt_every=3"]
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, WORKER, "--run-dir", str(ref), *args], check=True, env=ENV, capture_output=True)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, WORKER, "--run-dir", str(run), *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill between checkpoints: after step 7 is logged (checkpoint at 6)
        log = run / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 7:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ck.list_checkpoints(run / "checkpoints")[0][0] < 10
    subprocess.run([sys.executable, WORKER, "--run-dir", str(run), *args], check=True, env=ENV, capture_output=True)
    assert _losses(run) == _losses(ref)  # bit for bit on CPU
    assert len(_losses(run)) == 10


def test_corrupt_newest_checkpoint_falls_back_with_warning(tmp_path):
    _train(tmp_path, **{"train.steps": 6, "train.ckpt_every": 3})
    newest = ck.list_checkpoints(tmp_path / "checkpoints")[0][1]
    f = newest / "state.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.warns(UserWarning, match="truncated or corrupt.*falling back"):
        trainer = Trainer(tiny_config(**{"train.steps": 6, "train.ckpt_every": 3}), tmp_path, dataset=Synthetic())
    assert trainer.step == 3


def test_resume_refuses_another_model(tmp_path):
    _train(tmp_path, **{"train.steps": 3})
    with pytest.raises(Exception, match="another model"):
        Trainer(tiny_config(**{"train.steps": 3, "model.dec_width": 64}), tmp_path, dataset=Synthetic())


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, WORKER, "--run-dir", str(run), "train.steps=100000",
                             "train.ckpt_every=100000"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.jsonl").exists()
                                          and len((run / "log.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "signal=True" in out
    step, path = ck.list_checkpoints(run / "checkpoints")[0]
    assert step >= 3
    ck.verify_checkpoint(path)


def test_non_finite_loss_stops_with_step_term_and_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(**{"train.steps": 8, "train.ckpt_every": 2, "train.log_every": 4}), tmp_path,
                      dataset=Synthetic())
    real = trainer.model.forward

    def poisoned(images, labels, rng, step):
        loss, terms = real(images, labels, rng, step)
        if step >= 5:
            terms = {**terms, "mse": terms["mse"] * float("nan")}
            loss = loss * float("nan")
        return loss, terms

    trainer.model.forward = poisoned
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "step 5" in msg and "mse" in msg and "step-00000004" in msg
    assert ck.list_checkpoints(tmp_path / "checkpoints")[0][0] == 4  # nothing written from NaN weights


def test_non_finite_skip_mode_skips_and_counts(tmp_path):
    trainer = Trainer(tiny_config(**{"train.steps": 4, "train.nonfinite": "skip", "train.log_every": 4}), tmp_path,
                      dataset=Synthetic())
    real = trainer.model.forward

    def poisoned(images, labels, rng, step):
        loss, terms = real(images, labels, rng, step)
        return (loss * float("nan"), terms) if step == 1 else (loss, terms)

    trainer.model.forward = poisoned
    trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.model.net.parameters())
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["skipped_steps"] == 1.0


def test_checkpoint_retention(tmp_path):
    _train(tmp_path, **{"train.steps": 8, "train.ckpt_every": 1, "train.keep_last": 2, "train.keep_every": 4})
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "checkpoints")] == [8, 7, 4]


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process_and_resume(tmp_path):
    subprocess.run([sys.executable, WORKER, "--run-dir", str(tmp_path / "one"), "--dump", str(tmp_path / "w1"),
                    "train.steps=4"], check=True, env=ENV, capture_output=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519", WORKER,
           "--run-dir", str(tmp_path / "fsdp"), "--dump", str(tmp_path / "w2"), "train.fsdp=true"]
    first = subprocess.run([*cmd, "train.steps=3"], env=ENV, capture_output=True, text=True)  # checkpoint at 3
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run([*cmd, "train.steps=4"], env=ENV, capture_output=True, text=True)  # resumes at 3
    assert second.returncode == 0, second.stderr[-3000:]
    ck.verify_checkpoint(ck.list_checkpoints(tmp_path / "fsdp" / "checkpoints")[0][1])
    full = ck.read_tensors(ck.list_checkpoints(tmp_path / "fsdp" / "checkpoints")[0][1], "model")
    w1 = torch.load(f"{tmp_path / 'w1'}.rank0")
    for k in w1:
        torch.testing.assert_close(full[k], w1[k], rtol=1e-4, atol=1e-6, msg=k)
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "fsdp"), rel=1e-5)


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path):
    plain = _train(tmp_path / "plain", **{"train.steps": 2, "model.dropout": 0.3})
    ckpt = _train(tmp_path / "ckpt", **{"train.steps": 2, "model.dropout": 0.3, "train.activation_checkpointing": True})
    for (k, a), b in zip(plain.model.net.state_dict().items(), ckpt.model.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)


def test_layer_decay_groups_and_the_step_scales_each_lr(tmp_path):
    from epg.engine.schedule import learning_rate
    from epg.engine.setup import param_groups

    cfg = tiny_config(**{"train.steps": 2})
    off = param_groups(Trainer(cfg, tmp_path / "off", dataset=Synthetic()).model.net, cfg)
    assert [("lr_scale" in g, g["weight_decay"]) for g in off] == [(False, cfg.optim.weight_decay), (False, 0.0)]
    trainer = _train(tmp_path / "on", **{"optim.layer_decay": 0.5, "train.steps": 2})
    net, opt = trainer.model.net, trainer.model.opt
    scale_of = {id(p): g.get("lr_scale", 1.0) for g in opt.param_groups for p in g["params"]}
    names = dict(net.named_parameters())
    # depth L = 2: block i at 0.5^(2 − i), embeddings at 0.5^3; final LN, class table and decoder at 1
    expected = {"encoder.blocks.0.attn.qkv.weight": 0.25, "encoder.blocks.1.mlp.fc1.bias": 0.5,
                "encoder.pos_embed": 0.125, "encoder.patch_embed.weight": 0.125, "encoder.cls_token": 0.125,
                "encoder.norm.weight": 1.0, "class_embed.weight": 1.0, "blocks.0.attn.qkv.weight": 1.0}
    assert {k: scale_of[id(names[k])] for k in expected} == expected
    lr = learning_rate(1, trainer.cfg.optim, trainer.cfg.train.steps)  # the lr of the last step (step 1)
    assert lr > 0 and {g.get("lr_scale", 1.0): g["lr"] for g in opt.param_groups} == {
        s: lr * s for s in (1.0, 0.5, 0.25, 0.125)}
    logged = json.loads((tmp_path / "on" / "log.jsonl").read_text().splitlines()[-1])["lr"]
    assert logged == lr  # the log shows the schedule's lr, not a scaled group's
