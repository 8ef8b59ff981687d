"""A small Fashion-MNIST classifier that judges conditional samples: does a sample of class c look like class c?

Trained once (cached under runs/fmnist_classifier/, keyed by its settings) on the train split at the models'
32×32 padding, evaluated on the test split; the benchmarks that compare generators report the share of their
class-conditional samples it assigns to the class they were drawn for (`class_accuracy`).

    python benchmarks/fmnist_classifier.py            # train (or load) it and report its test accuracy
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from epg.data import open_dataset

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "fmnist_classifier"
RESULTS = Path(__file__).parent / "results"
SETTINGS = {"epochs": 4, "batch": 128, "lr": 2e-3, "seed": 0, "width": 16}


class Classifier(nn.Module):
    """(conv-BN-ReLU ×2, max-pool) ×2 → dropout → linear; uint8 1×32×32 in, 10 logits out."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1),
            nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * w * 8 * 8, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images.float() / 127.5 - 1.0))


def _split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = open_dataset("fmnist", split, resolution=32)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted class of each uint8 N×1×32×32 image (eval mode)."""
    model.eval()
    return torch.cat([model(chunk).argmax(1) for chunk in images.split(batch)])


def class_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose predicted class is their label."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"{len(images)} images and {len(labels)} labels: need as many, at least one")
    return float((predict(model, images) == labels).float().mean())


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch: int, lr: float, seed: int,
          width: int) -> Classifier:
    """AdamW with a cosine schedule and random ±2-pixel shifts; deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Classifier(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(images) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for start in range(0, len(images) - batch + 1, batch):
            idx = order[start:start + batch]
            x = images[idx]
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def cache_key() -> str:
    """The cached judge's file name (without extension): one per SETTINGS."""
    return "-".join(f"{k}{v}" for k, v in SETTINGS.items())


def load_or_train(cache: Path = CACHE, verbose: bool = True) -> tuple[Classifier, dict]:
    """The cached classifier for SETTINGS, trained (minutes on one core) when missing."""
    weights, meta_path = (cache / f"{cache_key()}{ext}" for ext in (".safetensors", ".json"))
    model = Classifier(SETTINGS["width"])
    if weights.is_file() and meta_path.is_file():
        model.load_state_dict(load_file(str(weights)))
        return model.eval(), json.loads(meta_path.read_text())
    if verbose:
        print(f"fmnist classifier: training ({SETTINGS}) …", flush=True)
    t0 = time.perf_counter()
    xtr, ytr = _split("train")
    model = train(xtr, ytr, **SETTINGS)
    xte, yte = _split("test")
    meta = {"settings": SETTINGS, "test_accuracy": class_accuracy(model, xte, yte),
            "train_seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads()}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    save_file(model.state_dict(), str(tmp))
    tmp.replace(weights)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return model, meta


def judge_record(cache: Path = CACHE, results: Path = RESULTS) -> dict | None:
    """The judge's record (settings, test accuracy) without training it: the cached one, else the one committed in
    `results` if it is of the same SETTINGS, else None (a report then says so instead of training for minutes)."""
    for path in (cache / f"{cache_key()}.json", results / "fmnist_classifier.json"):
        if path.is_file():
            meta = json.loads(path.read_text())
            if meta.get("settings") == SETTINGS:
                return meta
    return None


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    _, meta = load_or_train()
    print(f"fmnist classifier: test accuracy {meta['test_accuracy']:.4f} (trained in {meta['train_seconds']} s)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fmnist_classifier.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
