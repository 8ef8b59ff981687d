"""Candidate CPU speed-ups of the networks, each against the engine's own path, interleaved (issue #20).

The engine's tiny bf16 step already runs the plain attention, so at equal configuration it is the authors' speed;
this asks whether anything else buys the remaining ≥ 1.25×. Each variant is applied to the same network object in
turn (round-robin, `--rounds` rounds, medians), so machine load hits every path alike:

- `compile`: `torch.compile` (inductor, C++ on CPU) of the whole network;
- `ln-bf16`: LayerNorm fed its bf16 input directly (PyTorch's mixed-dtype kernel) instead of autocast's fp32 round
  trip — numerically the same rounding, half the bytes;
- `fp32-stream`: the encoder's residual stream in fp32 under autocast (the authors' code keeps it so; ours is bf16);
- `no-attention`: not a candidate but a bound — attention replaced by returning v (the qkv and output projections
  stay), so softmax(q·kᵀ)·v costs nothing. Its speed is the most any attention kernel could give over the plain
  reference.

    python benchmarks/cpu_variants.py --threads 1 --rounds 7
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from epg.nn import layers as nn_layers

sys.path.insert(0, str(Path(__file__).parent))
from attention import _networks, _step  # noqa: E402
from results_io import write_results  # noqa: E402
from throughput import loadavg  # noqa: E402

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("engine", "compile", "ln-bf16", "fp32-stream", "no-attention")


def _ln_bf16(self: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
    return _LN_FORWARD(self, x)


_LN_FORWARD = torch.nn.LayerNorm.forward


@contextlib.contextmanager
def variant(name: str, net: torch.nn.Module):
    """Patch `net` (or LayerNorm) for one variant; compile is a separate network object, not a patch."""
    handle, attention = None, nn_layers.attention
    if name == "no-attention":
        nn_layers.attention = lambda q, k, v: v
    elif name == "ln-bf16":
        torch.nn.LayerNorm.forward = _ln_bf16
    elif name == "fp32-stream":  # the token sequence enters the first block in fp32, so x + f(x) stays fp32
        first = getattr(net, "encoder", net).blocks[0]
        handle = first.register_forward_pre_hook(lambda module, args: (args[0].float(), *args[1:]))
    try:
        yield
    finally:
        torch.nn.LayerNorm.forward = _LN_FORWARD
        nn_layers.attention = attention
        if handle is not None:
            handle.remove()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=64, help="default: the CPU presets' training batch")
    p.add_argument("--out", type=Path, default=RESULTS / "cpu_variants")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load_before = loadavg()
    rows = []
    for kind, (net, _) in _networks("tiny").items():
        compiled = torch.compile(copy.deepcopy(net))
        for train in (True, False):
            nets = {v: compiled if v == "compile" else net for v in VARIANTS}
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for r in range(a.rounds + 2):  # two warm-up rounds (and the compile) are not timed
                for v in VARIANTS:
                    with variant(v, net):
                        t = _step(nets[v], kind, a.batch, torch.bfloat16, train)
                    if r >= 2:
                        times[v].append(t)
            med = {v: statistics.median(ts) for v, ts in times.items()}
            row = {"network": kind, "phase": "train step" if train else "inference", "batch": a.batch,
                   "ms": {v: round(1e3 * t, 1) for v, t in med.items()},
                   "speed": {v: round(med["engine"] / t, 3) for v, t in med.items()}}
            print(row, flush=True)
            rows.append(row)
    lines = [f"# CPU speed-up candidates (fmnist-tiny, bf16, {a.threads} thread(s), batch {a.batch}, median of "
             f"{a.rounds} interleaved rounds; load average {load_before} before, {loadavg()} after)", "",
             "Speed relative to the engine's path (> 1 is faster); the engine's path is the authors' speed at equal "
             "configuration (benchmarks/results/attention_bf16.md).", "",
             "| network | phase | engine ms | " + " | ".join(f"{v} speed" for v in VARIANTS[1:]) + " |",
             "|---|---|---|" + "---|" * (len(VARIANTS) - 1)]
    for r in rows:
        lines.append(f"| {r['network']} | {r['phase']} | {r['ms']['engine']:.1f} | "
                     + " | ".join(f"{r['speed'][v]:.2f}×" for v in VARIANTS[1:]) + " |")
    rerun = f"python benchmarks/cpu_variants.py --threads {a.threads} --rounds {a.rounds} --batch {a.batch}"
    lines += ["", f"Rerun: `{rerun}`.", ""]
    write_results(a.out, "\n".join(lines), {"loadavg_before": load_before, "rows": rows})


if __name__ == "__main__":
    main()
