"""`epg demo --quick`: the README's main job, end to end on real Fashion-MNIST with the real FID network."""

import json

import pytest

from epg.cli import main


@pytest.mark.slow
def test_quick_demo_writes_every_promised_file(tmp_path):
    run = tmp_path / "demo"
    assert main(["demo", "--quick", "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    for key in ("grid", "samples"):
        assert (run / summary[key].split("/")[-1]).is_file()
    for curve in summary["curves"]:
        assert curve.endswith("curves.png")
    assert (run / "pretrain" / "curves.png").is_file() and (run / "diffusion" / "curves.png").is_file()
    assert 0.0 < summary["fid"] < 1000.0
    assert 0.1 < summary["knn_accuracy"] <= 1.0
    assert summary["knn_pixels"] == 377 / 500  # raw pixels on the quick probe (2 000 / 500 images): 0.754
    assert summary["nfe"] == 75  # 32 Heun steps + final Euler step + interval CFG
    assert list((run / "diffusion" / "checkpoints").iterdir())
