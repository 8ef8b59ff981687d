"""Data-loading throughput: images/s per DataLoader worker, decode + a random crop/flip in torch.

Sources: a packed directory at 256² (memory-mapped shards), an ImageFolder of ~200 synthetic JPEGs decoded and
ADM-centre-cropped to 256² on the fly, and Fashion-MNIST padded to 32² (the CPU presets). Prints a markdown
table and writes benchmarks/results/data_loading.json.

    PYTHONPATH=src python benchmarks/data_loading.py [--images 1500] [--workers 0,2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from epg.data import ImageDataset, open_dataset, prepare_folder

RESULTS = Path(__file__).parent / "results" / "data_loading.json"


class RandomCropFlip(Dataset):
    """A dataset wrapper: a random (7/8-side) crop and a random horizontal flip, in torch, per image."""

    def __init__(self, dataset: ImageDataset, seed: int = 0):
        self.dataset = dataset
        self.crop = dataset.resolution - dataset.resolution // 8
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        top, left = torch.randint(0, image.shape[1] - self.crop + 1, (2,), generator=generator).tolist()
        image = image[:, top : top + self.crop, left : left + self.crop]
        if torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        return image.contiguous(), label


def make_jpegs(root: Path, count: int, seed: int = 0) -> None:
    """ImageNet-like JPEGs: typical sizes (500×375, 375×500, …), smooth content plus grain, quality 90."""
    rng = np.random.default_rng(seed)
    sizes = [(500, 375), (375, 500), (500, 333), (640, 480)]
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        y, x = np.mgrid[0:height, 0:width] / max(width, height)
        phase = rng.uniform(0, 6, 3)
        smooth = np.stack([np.sin(8 * x + 5 * y + p) for p in phase], axis=-1) * 100 + 128
        image = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        folder = root / f"n{i % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"img_{i:04d}.JPEG", quality=90)


def throughput(dataset: ImageDataset, images: int, workers: int, batch: int = 32) -> float:
    """Images per second through a shuffling DataLoader, once its workers are up."""
    loader = DataLoader(RandomCropFlip(dataset), batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    next(iter(loader))  # worker start-up, first memory maps and file opens are not throughput
    seen, start = 0, time.perf_counter()
    while seen < images:
        for batch_images, _ in loader:
            seen += len(batch_images)
            if seen >= images:
                break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="images timed per row")
    parser.add_argument("--jpegs", type=int, default=200, help="synthetic JPEGs in the ImageFolder")
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts (0 = in the main process)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per loader process, so rows measure one worker's work
    worker_counts = [int(w) for w in args.workers.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw, packed = Path(tmp) / "raw", Path(tmp) / "packed"
        make_jpegs(raw, args.jpegs)
        start = time.perf_counter()
        prepare_folder(raw, packed, 256, workers=1, shard_size=64, progress=False)
        prepare_rate = args.jpegs / (time.perf_counter() - start)
        sources = [
            ("packed dir (mmap .npy)", open_dataset(str(packed))),
            ("ImageFolder JPEG, ADM crop", open_dataset(str(raw), resolution=256)),
            ("fmnist, padded", open_dataset("fmnist", resolution=32)),
        ]
        for name, dataset in sources:
            for workers in worker_counts:
                rate = throughput(dataset, args.images, workers)
                per_worker = rate / max(workers, 1)
                rows.append({"source": name, "resolution": dataset.resolution, "workers": workers,
                             "images_per_s": round(rate, 1), "images_per_s_per_worker": round(per_worker, 1)})
                print(f"{name} @ {dataset.resolution}², workers={workers}: {rate:.0f} img/s", flush=True)

    print(f"\n`epg prepare` (1 process, 256², from ~500×375 JPEGs): {prepare_rate:.0f} img/s\n")
    print("| source | res | workers | img/s | img/s per worker |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['source']} | {row['resolution']}² | {row['workers']} | {row['images_per_s']:.0f} "
              f"| {row['images_per_s_per_worker']:.0f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    result = {"rows": rows, "prepare_images_per_s": round(prepare_rate, 1), "images_timed": args.images,
              "augment": "random 7/8 crop + h-flip (torch)", "batch": 32, "machine": machine}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
    main()
