"""In-training evaluation hooks: FID against the held-out split, sample grids, and the stage-1 k-NN probe."""

import json
import math
import sys
from pathlib import Path

import torch

from epg.engine.trainer import Trainer
from epg.evaluation import default_hooks
from epg.metrics.knn import KnnProbe

sys.path.insert(0, str(Path(__file__).parent))
from engine_worker import Synthetic, tiny_config  # noqa: E402


def test_fid_and_sample_grid_are_logged_next_to_the_loss(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(**{"train.steps": 2, "train.log_every": 2, "train.fid_every": 2, "train.fid_num": 12,
                         "train.sample_every": 2, "sample.steps": 3, "data.eval_split": "test"})
    trainer = Trainer(cfg, tmp_path, dataset=Synthetic())
    trainer.fit(default_hooks(cfg))
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert "loss" in record and math.isfinite(record["fid"]) and record["fid"] > 0
    assert (tmp_path / "samples" / "step-00000002.png").is_file()


def test_knn_probe_is_logged_during_pretraining(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config("pretrain", **{"train.steps": 2, "train.log_every": 2, "train.knn_every": 2})
    trainer = Trainer(cfg, tmp_path, dataset=Synthetic())
    trainer.fit(default_hooks(cfg))
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= record["knn_acc"] <= 1.0
    assert record["knn_pixels"] == KnnProbe(cfg).pixels()  # the raw-pixel baseline beside it, same images
