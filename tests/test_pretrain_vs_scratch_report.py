"""The ablation's variant table (benchmarks/pretrain_vs_scratch_report.py): each column compares like with like."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from pretrain_vs_scratch_report import _stats, _variants  # noqa: E402


def _arm(seed: int, dose: str, fids: dict[int, float], variant: str = "") -> dict:
    arm = {"objective": "diffusion", "dose": dose, "seed": seed,
           "evals": {str(e): {"status": "ok", "fid": f, "class_acc": 0.5} for e, f in fids.items()}}
    if variant:
        arm |= {"variant": variant, "overrides": {"optim.lr": "1e-3"}}
    return arm


def _row(lines: list[str]) -> list[str]:
    row = next(line for line in lines if line.startswith("| lr1e-3 |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_default_column_uses_the_seeds_the_variant_has_at_that_step():
    arms = [_arm(s, "1", {1000: 100.0 + s, 2000: 90.0 + 10 * s}) for s in (0, 1, 2)]  # default, 3 seeds
    arms += [_arm(s, "0", {1000: 130.0, 2000: 110.0}) for s in (0, 1, 2)]  # scratch
    # the variant: 3 seeds at step 1000, only seed 0 at step 2000
    arms += [_arm(0, "1", {1000: 80.0, 2000: 70.0}, "lr1e-3")]
    arms += [_arm(s, "1", {1000: 80.0 + s}, "lr1e-3") for s in (1, 2)]
    cells = _row(_variants(arms, "diffusion", [1000, 2000], {"doses": {"1": {"knn": 0.7}}}))
    # columns: variant, settings, dose, knn, then (FID, default, vs scratch, class acc) per step
    fid1, default1, vs1 = cells[4:7]
    fid2, default2, vs2 = cells[8:11]
    assert fid1 == _stats([80.0, 81.0, 82.0], ".1f") and default1 == _stats([100.0, 101.0, 102.0], ".1f")
    assert vs1 == f"{100 * (81.0 / 130.0 - 1):+.1f} %"
    # at step 2000 the default is seed 0's alone (90.0), not the mean over its 3 seeds (100.0)
    assert fid2 == _stats([70.0], ".1f") and default2 == _stats([90.0], ".1f")
    assert vs2 == f"{100 * (70.0 / 110.0 - 1):+.1f} %"


def test_default_column_falls_back_to_all_variant_seeds_where_the_variant_has_no_result():
    arms = [_arm(0, "1", {1000: 100.0, 2000: 90.0}), _arm(1, "1", {1000: 102.0, 2000: 94.0}),
            _arm(0, "0", {1000: 130.0, 2000: 110.0}), _arm(0, "1", {1000: 80.0}, "lr1e-3")]
    cells = _row(_variants(arms, "diffusion", [1000, 2000], {"doses": {"1": {"knn": 0.7}}}))
    assert cells[8] == "–" and cells[9] == _stats([90.0], ".1f") and cells[10] == "–"
