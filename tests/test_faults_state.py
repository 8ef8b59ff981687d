"""Faults that used to lose work or keep bad state (issue 17, cases 1 and 3–9), each end to end on a tiny run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from epg.config import ConfigError
from epg.engine import checkpoint as ck
from epg.engine.resume import RunDirInUseError
from epg.engine.runlog import read_log
from epg.engine.trainer import NonFiniteLossError, Trainer
from epg.presets import get_preset

sys.path.insert(0, str(Path(__file__).parent))
from engine_worker import Synthetic, tiny_config  # noqa: E402

WORKER = str(Path(__file__).parent / "engine_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _trainer(run_dir, stage="diffusion", restart=False, **over):
    torch.set_num_threads(1)
    return Trainer(tiny_config(stage, **over), run_dir, dataset=Synthetic(), restart=restart)


def _train(run_dir, stage="diffusion", hooks=None, **over):
    trainer = _trainer(run_dir, stage, **over)
    trainer.fit(hooks)
    return trainer


def _records(run_dir):
    """Every line of log.jsonl parsed (a torn line fails the test), without the wall-clock throughput."""
    lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"} for line in lines]


def _all_checkpoints_finite(run_dir):
    for _, path in ck.list_checkpoints(Path(run_dir) / "checkpoints"):
        ck.verify_checkpoint(path)
        for name in ("model", "state", "ema"):
            ck.read_tensors(path, name)  # raises on a NaN/Inf tensor


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _poison_gradient_at(trainer, bad_step):
    real = trainer.model.forward

    def model(images, labels, rng, step):
        loss, terms = real(images, labels, rng, step)
        return (_NanGradient.apply(loss) if step == bad_step else loss), terms

    trainer.model.forward = model


# ---------------------------------------------------------------- case 1: non-finite gradients
def test_case1_diverging_lr_never_reaches_a_checkpoint_and_a_sane_rerun_recovers(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        _train(run, **{"optim.lr": 1e4, "train.steps": 6, "train.ckpt_every": 1})
    named = str(err.value).split("the last good checkpoint is ")[1].split(". ")[0]
    _all_checkpoints_finite(run)
    assert Path(named) == ck.list_checkpoints(run / "checkpoints")[0][1]  # the newest kept one, and it is good
    trainer = _train(run, **{"optim.lr": 1e-4, "train.steps": 6, "train.ckpt_every": 1})
    assert trainer.step == 6 and all(torch.isfinite(p).all() for p in trainer.model.net.parameters())
    _all_checkpoints_finite(run)


def test_case1_non_finite_gradients_with_a_finite_loss_stop_the_run(tmp_path):
    trainer = _trainer(tmp_path, **{"train.steps": 6, "train.ckpt_every": 1, "train.log_every": 3})
    _poison_gradient_at(trainer, 4)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradients at step 4 .*step-00000003"):
        trainer.fit()
    # Checkpoint 4 holds the weights that step 4 started from: set aside, kept, never resumed from.
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "checkpoints")] == [3, 2, 1]
    assert (tmp_path / "checkpoints" / "diverged-step-00000004").is_dir()
    _all_checkpoints_finite(tmp_path)


def test_case1_skip_mode_skips_the_update_itself(tmp_path):
    trainer = _trainer(tmp_path, **{"train.steps": 4, "train.nonfinite": "skip"})
    _poison_gradient_at(trainer, 2)
    seen = {}

    def snapshot(run, step):
        seen[step] = [p.detach().clone() for p in trainer.model.trained] + [e.clone() for e in trainer.model.ema]
        return {}

    trainer.fit([snapshot])
    assert all(torch.equal(a, b) for a, b in zip(seen[2], seen[3]))  # step 3's update was skipped, EMA too
    assert not all(torch.equal(a, b) for a, b in zip(seen[3], seen[4]))  # training went on afterwards
    assert read_log(tmp_path / "log.jsonl")[-1]["skipped_steps"] == 1.0
    _all_checkpoints_finite(tmp_path)


# ---------------------------------------------------------------- case 3: nothing verifies
def test_case3_no_good_checkpoint_refuses_and_never_empties_the_log(tmp_path):
    _train(tmp_path, **{"train.steps": 6})
    log_before = (tmp_path / "log.jsonl").read_bytes()
    for _, path in ck.list_checkpoints(tmp_path / "checkpoints"):
        f = path / "model.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ck.CheckpointError, match="no checkpoint .* can be resumed.*--restart"):
        _trainer(tmp_path, **{"train.steps": 6})
    assert (tmp_path / "log.jsonl").read_bytes() == log_before
    _train(tmp_path, restart=True, **{"train.steps": 6})
    log_after = (tmp_path / "log.jsonl").read_bytes()
    assert log_after.startswith(log_before)  # only ever appended to
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert len(list((tmp_path / "checkpoints").glob("abandoned-*-step-*"))) == 2  # the old ones are kept


# ---------------------------------------------------------------- case 4: keep_last 0
def test_case4_keep_last_zero_is_refused_and_the_newest_checkpoint_is_never_pruned(tmp_path):
    with pytest.raises(ConfigError, match="train.keep_last"):
        get_preset("fmnist-tiny", "diffusion", {"train.keep_last": 0})
    trainer = _train(tmp_path, **{"train.steps": 3, "train.ckpt_every": 1})
    newest = ck.list_checkpoints(tmp_path / "checkpoints")[0][1]
    ck.prune_checkpoints(tmp_path / "checkpoints", 0, 0, trainer.cfg, newest=newest)
    assert ck.list_checkpoints(tmp_path / "checkpoints") == [(3, newest)]
    assert trainer.last_checkpoint == newest and newest.is_dir()


# ---------------------------------------------------------------- case 5: torn log line
def test_case5_a_torn_last_log_line_does_not_stop_the_resume(tmp_path):
    ref = tmp_path / "ref"
    _train(ref, **{"train.steps": 4, "train.ckpt_every": 2})
    run = tmp_path / "run"
    _train(run, **{"train.steps": 4, "train.ckpt_every": 2})
    shutil.rmtree(ck.list_checkpoints(run / "checkpoints")[0][1])  # the crash came before checkpoint 4 …
    log = run / "log.jsonl"
    log.write_bytes(log.read_bytes()[:-40])  # … while step 4's line was being written
    _train(run, **{"train.steps": 4, "train.ckpt_every": 2})
    assert _records(run) == _records(ref)


# ---------------------------------------------------------------- case 6: two processes, one run directory
@pytest.mark.slow
def test_case6_a_second_process_in_a_run_directory_is_refused_naming_the_holder(tmp_path):
    proc = subprocess.Popen([sys.executable, WORKER, "--run-dir", str(tmp_path), "train.steps=100000",
                             "train.ckpt_every=100000"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((tmp_path / "log.jsonl").exists()
                                              and (tmp_path / "log.jsonl").read_text().count("\n") >= 2):
            time.sleep(0.05)
        log_before = (tmp_path / "log.jsonl").read_text()
        with pytest.raises(RunDirInUseError, match=f"in use by process {proc.pid} on "):
            _trainer(tmp_path, **{"train.steps": 3})
        assert (tmp_path / "log.jsonl").read_text().startswith(log_before)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "signal=True" in out
    _train(tmp_path, **{"train.steps": 3})  # the lock went with the process


# ---------------------------------------------------------------- case 7: a resume depends on its own checkpoint
def _crash_after(run_dir, step):
    """What a kill -9 right after checkpoint `step` leaves: no newer checkpoint, log lines up to `step`."""
    for s, path in ck.list_checkpoints(Path(run_dir) / "checkpoints"):
        if s > step:
            shutil.rmtree(path)
    log = Path(run_dir) / "log.jsonl"
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[:step]))


def test_case7_a_resumed_stage2_run_never_rereads_init(tmp_path):
    stage1 = tmp_path / "stage1"
    _train(stage1, "pretrain", **{"train.steps": 2, "train.ckpt_every": 1})
    # aux on, so the consistency run also holds the frozen stage-1 network W that a resume must not reread
    init = {"train.init_from": str(stage1), "train.steps": 4, "train.ckpt_every": 2, "consistency.aux_weight": 1.0}
    _train(tmp_path / "ref", "consistency", **init)
    for stage in ("consistency", "diffusion"):
        _train(tmp_path / stage, stage, **init)
        _crash_after(tmp_path / stage, 2)
    shutil.rmtree(stage1 / "checkpoints" / "step-00000002")  # stage 1 now resolves to another network …
    _train(tmp_path / "consistency", "consistency", **init)
    assert _records(tmp_path / "consistency") == _records(tmp_path / "ref")  # … which the resume did not read
    shutil.rmtree(stage1)  # … and then it is gone
    assert _train(tmp_path / "diffusion", "diffusion", **init).step == 4


# ---------------------------------------------------------------- case 8: foreign checkpoints
def test_case8_a_foreign_checkpoint_is_named_and_skipped(tmp_path):
    other = tmp_path / "other"
    _train(other, "pretrain", **{"train.steps": 2, "train.ckpt_every": 2})
    run = tmp_path / "run"
    _train(run, **{"train.steps": 3})
    foreign = run / "checkpoints" / "step-00000099"
    shutil.copytree(ck.list_checkpoints(other / "checkpoints")[0][1], foreign)
    with pytest.warns(UserWarning, match="skipping foreign checkpoint step-00000099.*another model.*stage"):
        trainer = _train(run, **{"train.steps": 6, "train.ckpt_every": 1, "train.keep_last": 1})
    assert trainer.step == 6 and trainer.last_checkpoint.name == "step-00000006"
    assert foreign.is_dir()  # never resumed from, never pruned


# ---------------------------------------------------------------- case 9: resume is exact, leftovers, full disk
class _Crash(Exception):
    pass


def _interrupt_at(trainer, bad_step, how):
    real = trainer.model.forward

    def model(images, labels, rng, step):
        if step == bad_step:
            if how == "crash":  # kill -9: the process ends here, with what is on disk
                raise _Crash
            os.kill(os.getpid(), signal.SIGTERM)
        return real(images, labels, rng, step)

    trainer.model.forward = model


@pytest.mark.parametrize("how,bad_step", [("crash", 3), ("sigterm", 4)])
def test_case9_log_after_resume_equals_the_uninterrupted_run(tmp_path, how, bad_step):
    over = {"train.steps": 8, "train.ckpt_every": 3, "train.log_every": 4}
    _train(tmp_path / "ref", **over)
    trainer = _trainer(tmp_path / "run", **over)
    _interrupt_at(trainer, bad_step, how)
    if how == "crash":
        with pytest.raises(_Crash):
            trainer.fit()
    else:
        assert trainer.fit().stopped_by_signal
    assert _train(tmp_path / "run", **over).step == 8
    assert _records(tmp_path / "run") == _records(tmp_path / "ref")


def test_case9_leftover_temporary_checkpoints_are_removed(tmp_path):
    _train(tmp_path, **{"train.steps": 3})
    leftover = tmp_path / "checkpoints" / ".step-00000006.tmp-12345"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    _train(tmp_path, **{"train.steps": 6})
    assert not leftover.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]


def test_case9_a_full_disk_is_one_clear_error_and_leaves_no_temporary(tmp_path, monkeypatch):
    _train(tmp_path, **{"train.steps": 3})
    real = ck.save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if "step-00000006" in filename:
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ck, "save_file", full_disk)
    for _ in range(2):  # a retry leaves nothing behind either
        with pytest.raises(ck.CheckpointError) as err:
            _train(tmp_path, **{"train.steps": 6})
        msg = str(err.value)
        assert "no space left on the device" in msg and "step-00000003" in msg and "\n" not in msg
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000003"]
    ck.verify_checkpoint(tmp_path / "checkpoints" / "step-00000003")


# ---------------------------------------------------------------- case 10: what the split promise means in bf16
def test_case10_in_bf16_a_split_agrees_only_to_bf16_rounding(tmp_path):
    over = {"train.precision": "bf16", "train.steps": 12, "train.ckpt_every": 100}
    _train(tmp_path / "whole", **over)
    _train(tmp_path / "split", **over, **{"train.micro_batch": 4})
    whole, split = (_records(tmp_path / name) for name in ("whole", "split"))
    gaps = [abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(whole, split)]
    assert len(gaps) == 12 and max(gaps) < 1e-4  # what the README promises for bf16: close, not bit for bit
