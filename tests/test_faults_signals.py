"""SIGTERM as schedulers send it (issue 17, case 2): to a whole process group with DataLoader workers, and to
one rank of a torchrun job. Either way every rank checkpoints at the same step and exits 0, leaving no process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epg.engine import checkpoint as ck

WORKER = str(Path(__file__).parent / "engine_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
LONG = ["train.steps=100000", "train.ckpt_every=100000"]


def _wait_for_log_lines(run_dir: Path, n: int, proc: subprocess.Popen) -> None:
    log = run_dir / "log.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not log {n} steps (exit {proc.poll()})")


def _group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> int:
    env = dict(kv.split("=", 1) for kv in (Path("/proc") / str(pid) / "environ").read_text().split("\0") if "=" in kv)
    return int(env["RANK"])


def _assert_checkpointed(run_dir: Path) -> int:
    step, path = ck.list_checkpoints(run_dir / "checkpoints")[0]
    ck.verify_checkpoint(path)
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        json.loads(line)
    return step


@pytest.mark.slow
def test_case2_sigterm_to_the_process_group_with_dataloader_workers(tmp_path):
    proc = subprocess.Popen([sys.executable, WORKER, "--run-dir", str(tmp_path), *LONG, "data.workers=2"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_log_lines(tmp_path, 3, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # what timeout, Slurm and systemd do: every process of the group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "signal=True" in out and "killed by signal" not in err
    assert _assert_checkpointed(tmp_path) >= 3
    time.sleep(1)
    assert _group_is_gone(proc.pid)  # no DataLoader worker outlives the run


@pytest.mark.slow
def test_case2_sigterm_to_one_torchrun_rank_stops_both_at_one_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             "29541", WORKER, "--run-dir", str(tmp_path), *LONG], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_log_lines(tmp_path, 3, proc)
        ranks = {_rank_of(pid): pid for pid in _children(proc.pid)}
        os.kill(ranks[1], signal.SIGTERM)
        t0 = time.time()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert time.time() - t0 < 60
    assert out.count("signal=True") == 2  # both ranks stopped at the same step, by the signal
    assert _assert_checkpointed(tmp_path) >= 3
    time.sleep(1)
    assert _group_is_gone(proc.pid)
