"""CPU attention paths side by side: the network's forward + backward and its no-grad forward, interleaved.

For the fmnist-tiny generator and encoder (and B-sized ones with `--sizes tiny B`), in bf16 autocast (or fp32),
it times every path of `epg.nn.layers.CPU_ATTENTION` in rounds — explicit, math, fused, explicit, math, … — so
that a change in the machine's load hits every path alike, and reports medians and ratios to "explicit", the
plain q·kᵀ → softmax → ·v that the authors' network computes (so its time is theirs at equal configuration).

    python benchmarks/attention.py --threads 1 --rounds 7                 # tiny, bf16 (issue: ≥ 1.25× wanted)
    python benchmarks/attention.py --threads 1 --sizes tiny B --dtype fp32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from epg.nn import build_generator, build_rcm, layers
from epg.presets import get_preset

RESULTS = Path(__file__).parent / "results"
PATHS = ("explicit", "math", "fused")
SIZES = {"tiny": ("fmnist-tiny", {}, 32),
         "B": ("fmnist-small", {"model.enc_depth": 12, "model.enc_width": 768, "model.enc_heads": 12,
                                "model.dec_width": 768, "model.dec_heads": 12}, 8)}


def _networks(size: str) -> dict[str, tuple[torch.nn.Module, int]]:
    preset, overrides, batch = SIZES[size]
    cfg = get_preset(preset, "diffusion", dict(overrides))
    torch.manual_seed(0)
    return {"generator": (build_generator(cfg.model), batch), "encoder": (build_rcm(cfg.model).encoder, batch)}


def _step(net: torch.nn.Module, kind: str, batch: int, dtype: torch.dtype, train: bool) -> float:
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(batch, net_channels(net), 32, 32, generator=g), torch.randn(batch, generator=g)
    args = (x, c, torch.randint(0, 10, (batch,), generator=g)) if kind == "generator" else (x, c)
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    t0 = time.perf_counter()
    if train:
        with autocast:
            out = net(*args)
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()
    else:
        with torch.no_grad(), autocast:
            net(*args)
    return time.perf_counter() - t0


def net_channels(net: torch.nn.Module) -> int:
    encoder = getattr(net, "encoder", net)
    return encoder.patch_embed.in_channels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sizes", nargs="+", default=["tiny"], choices=list(SIZES))
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--out", type=Path, default=RESULTS / "attention")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    load_before = os.getloadavg()
    rows = []
    for size in args.sizes:
        for kind, (net, batch) in _networks(size).items():
            for train in (True, False):
                times: dict[str, list[float]] = {path: [] for path in PATHS}
                for r in range(args.rounds + 1):  # round 0 warms every path up and is not counted
                    for path in PATHS:
                        layers.CPU_ATTENTION = path
                        t = _step(net, kind, batch, dtype, train)
                        if r:
                            times[path].append(t)
                med = {path: statistics.median(v) for path, v in times.items()}
                rows.append({"size": size, "network": kind, "phase": "train step" if train else "inference",
                             "batch": batch, "ms": {k: 1e3 * v for k, v in med.items()},
                             "speed_vs_explicit": {k: med["explicit"] / v for k, v in med.items()}})
                print(rows[-1], flush=True)
    layers.CPU_ATTENTION = "explicit"
    report = {"dtype": args.dtype, "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "rows": rows}
    lines = [f"# CPU attention paths ({args.dtype}, {args.threads} thread(s), median of {args.rounds} interleaved "
             f"rounds; load average {load_before[0]:.2f} before, {report['loadavg_after'][0]:.2f} after)", "",
             "Speed relative to `explicit` (the authors' plain attention; > 1 is faster). Engine default: explicit.",
             "", "| size | network | phase | batch | " + " | ".join(f"{k} ms" for k in PATHS) + " | "
             + " | ".join(f"{k} speed" for k in PATHS[1:]) + " |", "|---" * (4 + 2 * len(PATHS) - 1) + "|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['network']} | {r['phase']} | {r['batch']} | "
                     + " | ".join(f"{r['ms'][k]:.1f}" for k in PATHS) + " | "
                     + " | ".join(f"{r['speed_vs_explicit'][k]:.2f}×" for k in PATHS[1:]) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.dtype}"
    args.out.with_name(args.out.name + suffix + ".md").write_text(text)
    args.out.with_name(args.out.name + suffix + ".json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
