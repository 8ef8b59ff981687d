"""The ablation's variant table (benchmarks/pretrain_vs_scratch_report.py): each column compares like with like."""

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from pretrain_vs_scratch_report import _collect, _stats, _variants, arm_name, restore  # noqa: E402


def _arm(seed: int, dose: str, fids: dict[int, float], variant: str = "", overrides: dict | None = None) -> dict:
    arm = {"objective": "diffusion", "dose": dose, "seed": seed,
           "evals": {str(e): {"status": "ok", "fid": f, "class_acc": 0.5} for e, f in fids.items()}}
    if variant:
        arm |= {"variant": variant, "overrides": overrides or {"optim.lr": "1e-3"}}
    return arm


def _row(lines: list[str], variant: str = "lr1e-3") -> list[str]:
    row = next(line for line in lines if line.startswith(f"| {variant} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_default_column_uses_the_seeds_the_variant_has_at_that_step():
    arms = [_arm(s, "1", {1000: 100.0 + s, 2000: 90.0 + 10 * s}) for s in (0, 1, 2)]  # default, 3 seeds
    arms += [_arm(s, "0", {1000: 130.0, 2000: 110.0}) for s in (0, 1, 2)]  # scratch
    # the variant: 3 seeds at step 1000, only seed 0 at step 2000
    arms += [_arm(0, "1", {1000: 80.0, 2000: 70.0}, "lr1e-3")]
    arms += [_arm(s, "1", {1000: 80.0 + s}, "lr1e-3") for s in (1, 2)]
    cells = _row(_variants(arms, "diffusion", [1000, 2000], {"doses": {"1": {"knn": 0.7}}}))
    # columns: variant, settings, base, dose, knn, then (FID, base, vs scratch, class acc) per step
    assert cells[2] == "–"  # no other variant's settings are part of its own: compared with the defaults
    fid1, default1, vs1 = cells[5:8]
    fid2, default2, vs2 = cells[9:12]
    assert fid1 == _stats([80.0, 81.0, 82.0], ".1f") and default1 == _stats([100.0, 101.0, 102.0], ".1f")
    assert vs1 == f"{100 * (81.0 / 130.0 - 1):+.1f} %"
    # at step 2000 the default is seed 0's alone (90.0), not the mean over its 3 seeds (100.0)
    assert fid2 == _stats([70.0], ".1f") and default2 == _stats([90.0], ".1f")
    assert vs2 == f"{100 * (70.0 / 110.0 - 1):+.1f} %"


def test_default_column_falls_back_to_all_variant_seeds_where_the_variant_has_no_result():
    arms = [_arm(0, "1", {1000: 100.0, 2000: 90.0}), _arm(1, "1", {1000: 102.0, 2000: 94.0}),
            _arm(0, "0", {1000: 130.0, 2000: 110.0}), _arm(0, "1", {1000: 80.0}, "lr1e-3")]
    cells = _row(_variants(arms, "diffusion", [1000, 2000], {"doses": {"1": {"knn": 0.7}}}))
    assert cells[9] == "–" and cells[10] == _stats([90.0], ".1f") and cells[11] == "–"


def test_a_variant_built_on_another_is_compared_with_it_and_with_its_scratch_arm():
    both = {"optim.lr": "1e-3", "diffusion.p_mean": "0"}
    arms = [_arm(0, "1", {2000: 110.0}), _arm(0, "0", {2000: 120.0})]  # the pinned defaults
    arms += [_arm(s, "1", {2000: 100.0 + s}, "lr1e-3") for s in (0, 1)]
    arms += [_arm(s, "0", {2000: 96.0 + 2 * s}, "lr1e-3") for s in (0, 1, 2)]  # lr1e-3's scratch arm
    arms += [_arm(0, "1", {2000: 90.0}, "lr1e-3-pmean0", both)]
    arms += [_arm(0, "1", {2000: 95.0}, "pmean0", {"diffusion.p_mean": "0"})]  # as large a subset, fewer arms
    arms += [_arm(0, "1", {2000: 95.0}, "other", {"optim.lr": "2e-3"})]  # same key, other value: not a subset
    # built on lr1e-3-pmean0, which has no scratch arm: its scratch comparison falls through to lr1e-3's
    arms += [_arm(0, "1", {2000: 85.0}, "lr1e-3-pmean0-cap", both | {"diffusion.weight_cap": "40"})]
    lines = _variants(arms, "diffusion", [2000], {"doses": {"0": {"knn": 0.6}, "1": {"knn": 0.7}}})
    cells = _row(lines, "lr1e-3-pmean0")
    assert cells[2] == "lr1e-3"
    # base @ 2000: lr1e-3 at seed 0 only (the variant's seeds), not the defaults' 110.0 nor lr1e-3's seed 1
    assert cells[6] == _stats([100.0], ".1f")
    assert cells[7] == f"{100 * (90.0 / 98.0 - 1):+.1f} %"  # against lr1e-3's scratch mean, not 120.0
    assert _row(lines, "lr1e-3")[2] == "–" and _row(lines, "other")[2] == "–"
    assert _row(lines, "pmean0")[2] == "–"
    deeper = _row(lines, "lr1e-3-pmean0-cap")
    assert deeper[2] == "lr1e-3-pmean0" and deeper[6] == _stats([90.0], ".1f")
    assert deeper[7] == f"{100 * (85.0 / 98.0 - 1):+.1f} %"


def test_restore_writes_the_saved_arms_back_under_their_names_and_keeps_newer_files(tmp_path):
    pre = {"steps": 1000, "doses": {"1": {"knn": 0.7}}}
    arms = [_arm(0, "1", {1000: 100.0}), _arm(1, "0", {1000: 120.0}), _arm(2, "1", {1000: 90.0}, "lr1e-3")]
    saved = tmp_path / "pretrain_vs_scratch.json"
    saved.write_text(json.dumps({"pretrain": pre, "classifier": {}, "arms": arms}))
    work = tmp_path / "work"
    work.mkdir()
    newer = _arm(0, "1", {1000: 99.0, 2000: 80.0})  # the same arm, since evaluated further: not overwritten
    (work / "diffusion-dose1-seed0.json").write_text(json.dumps(newer))
    assert restore(work, saved) == 3  # pretrain.json and the two arms missing from the work folder
    assert json.loads((work / "pretrain.json").read_text()) == pre
    assert json.loads((work / "diffusion-lr1e-3-dose1-seed2.json").read_text()) == arms[2]
    assert json.loads((work / "diffusion-dose0-seed1.json").read_text()) == arms[1]
    assert json.loads((work / "diffusion-dose1-seed0.json").read_text()) == newer
    names = sorted(arm_name(a["objective"], a["dose"], a["seed"], variant=a.get("variant", ""))
                   for a in _collect(argparse.Namespace(work=work)))
    assert names == ["diffusion-dose0-seed1", "diffusion-dose1-seed0", "diffusion-lr1e-3-dose1-seed2"]
    assert restore(work, saved) == 0  # idempotent
    with pytest.raises(SystemExit, match="no results to restore"):
        restore(work, tmp_path / "missing.json")


def test_an_arm_evaluated_at_every_point_is_not_trained_again(tmp_path):
    import pretrain_vs_scratch as pvs

    arm = _arm(0, "1", {1000: 100.0, 2000: 90.0})
    (tmp_path / "diffusion-dose1-seed0.json").write_text(json.dumps(arm))
    args = argparse.Namespace(work=tmp_path, variant="", overrides={}, eval_steps=[1000, 2000], preset="fmnist-tiny")
    # `pre` names no encoder: reaching the fine-tuning set-up would fail, so returning the arm means it was skipped
    assert pvs.finetune_arm(args, "diffusion", "1", 0, {"doses": {}}, judge=None) == arm
    assert not (tmp_path / "diffusion-dose1-seed0").exists()
    args.eval_steps = [1000, 2000, 4000]  # a point not yet evaluated: it goes on to set the run up
    with pytest.raises(KeyError):
        pvs.finetune_arm(args, "diffusion", "1", 0, {"doses": {}}, judge=None)
