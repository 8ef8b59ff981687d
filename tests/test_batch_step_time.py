"""benchmarks/batch_step_time.py: the exchange rate between batch sizes is computed from the timings it took."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import batch_step_time as bst  # noqa: E402


def test_each_size_is_a_real_trainer_at_that_batch_and_the_table_follows_the_timings(tmp_path, monkeypatch):
    seen = []
    real = bst.child._trainer

    def spy(spec, models, work):
        trainer = real(spec, models, work)
        seen.append((spec["batch"], trainer.cfg.train.global_batch, trainer.cfg.stage))
        return trainer

    monkeypatch.setattr(bst.child, "_trainer", spy)
    fake = {4: [0.2, 0.1, 0.3], 8: [0.4, 0.5, 0.6]}  # medians 0.2 and 0.5
    per_step = bst.measure("fmnist-tiny", "diffusion", [4, 8], rounds=2, steps=1, warmup=0)
    assert sorted(seen) == [(4, 4, "diffusion"), (8, 8, "diffusion")]
    assert {b: len(v) for b, v in per_step.items()} == {4: 2, 8: 2} and all(t > 0 for v in per_step.values() for t in v)
    monkeypatch.setattr(bst, "measure", lambda *a: fake)
    bst.main(["--batches", "4", "8", "--ref", "8", "--ref-steps", "100", "--out", str(tmp_path / "r")])
    rows = {r["batch"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows[8]["time_ratio"] == 1.0 and rows[4]["time_ratio"] == pytest.approx(0.4)
    assert (rows[4]["steps_at_equal_time"], rows[4]["images_at_equal_time"]) == (250, 1000)  # 100 · 0.5 / 0.2
    assert rows[8]["steps_at_equal_time"] == 100 and rows[4]["images_per_s"] == pytest.approx(20.0)
    assert "| 4 | 200.0 | 20 | 0.400 | 250 | 1000 |" in (tmp_path / "r.md").read_text()


def test_a_reference_batch_outside_the_sizes_is_refused(capsys):
    with pytest.raises(SystemExit):
        bst.main(["--batches", "16", "32", "--ref", "64"])
    assert "--ref 64 is not one of --batches [16, 32]: add it" in capsys.readouterr().err
