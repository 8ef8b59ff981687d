"""A tiny but real training run used by the engine tests (run directly or under torchrun)."""

import argparse
import os
import sys

import torch
from torch.utils.data import Dataset

from epg.engine.trainer import Trainer
from epg.presets import get_preset


class Synthetic(Dataset):
    """96 fixed random 1×32×32 uint8 images with labels i % 10 (a Dataset like epg.data's)."""

    channels, num_classes, resolution = 1, 10, 32

    def __init__(self):
        g = torch.Generator().manual_seed(123)
        self.images = torch.randint(0, 256, (96, 1, 32, 32), generator=g, dtype=torch.uint8)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 10


def tiny_config(stage="diffusion", **over):
    base = {"model.enc_depth": 2, "model.enc_width": 32, "model.enc_heads": 2, "model.dec_width": 32,
            "model.dec_heads": 2, "model.proj_hidden": 64, "model.proj_out": 16, "train.global_batch": 16,
            "train.steps": 6, "train.log_every": 1, "train.ckpt_every": 3, "data.workers": 0,
            "train.precision": "fp32", "optim.warmup_steps": 2, "train.keep_last": 10, "train.device": "cpu"}
    base.update(over)
    return get_preset("fmnist-tiny", stage, base)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--dump", default=None, help="save the final weights of this rank here (+ rank suffix)")
    p.add_argument("--stage", default="diffusion")
    p.add_argument("overrides", nargs="*", help="key=value")
    a = p.parse_args()
    torch.set_num_threads(1)
    over = dict(kv.split("=", 1) for kv in a.overrides)
    trainer = Trainer(tiny_config(a.stage, **over), a.run_dir, dataset=Synthetic())
    result = trainer.fit()
    if a.dump:
        rank = os.environ.get("RANK", "0")
        torch.save({k: v.clone() for k, v in trainer.model.net.state_dict().items()}, f"{a.dump}.rank{rank}")
    print(f"done step={result.step} signal={result.stopped_by_signal}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
