"""How fast the FID network embeds images, by batch size (issue #20: "batch size chosen by measurement").

Times `FIDInception.features` (fp32, channels-last, the only setting that leaves the features unchanged) on the
demo's images — Fashion-MNIST test images at 32×32, 1 channel, resized to 299 inside — at several batch sizes,
interleaved over rounds so that a load change hits every size alike; prints img/s per size (median over rounds)
and writes JSON.

    python benchmarks/fid_speed.py                          # torch's default threads, 4 rounds of 128 images
    python benchmarks/fid_speed.py --threads 1 --sizes 16 32 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from epg.data import open_dataset
from epg.metrics import load_inception

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[16, 32, 64, 128])
    p.add_argument("--images", type=int, default=128, help="images per timing (a multiple of every size)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "fid_speed")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ds = open_dataset("fmnist", "test", resolution=32)
    images = torch.stack([ds[i][0] for i in range(a.images)])
    net = load_inception()
    net.features(images[:8])  # warm-up: weights paged in, kernels chosen
    load_before = os.getloadavg()
    times: dict[int, list[float]] = {b: [] for b in a.sizes}
    for r in range(a.rounds):
        for b in (a.sizes if r % 2 == 0 else a.sizes[::-1]):
            t0 = time.perf_counter()
            for chunk in images.split(b):
                net.features(chunk)
            times[b].append(time.perf_counter() - t0)
    rows = [{"batch": b, "img_per_s": a.images / statistics.median(t), "seconds": [round(x, 3) for x in t]}
            for b, t in times.items()]
    best = max(rows, key=lambda r: r["img_per_s"])
    lines = [f"FID Inception (fp32, channels-last) on {a.images} Fashion-MNIST 32×32 images, {torch.get_num_threads()} "
             f"thread(s), median of {a.rounds} interleaved rounds; load average before {load_before[0]:.2f}, after "
             f"{os.getloadavg()[0]:.2f}", "", "| batch | img/s | vs best |", "|---|---|---|"]
    lines += [f"| {r['batch']} | {r['img_per_s']:.1f} | {r['img_per_s'] / best['img_per_s']:.2f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text(text)
    a.out.with_suffix(".json").write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows,
                                                      "loadavg_before": load_before,
                                                      "loadavg_after": os.getloadavg()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
