"""What a fine-tuning step costs at each batch size, measured interleaved (issue #15: batch at equal wall time).

A smaller batch learns more per image on fmnist-tiny (benchmarks/results/pretrain_vs_scratch.md, `lr1e-3-b32`), but
each image costs more: this gives the exchange rate. For each batch size one real Trainer of the preset's stage
(benchmarks/throughput_child.py: the engine's `train_step` on random images, past warm-up, bf16 as the engine);
the sizes take turns, `--steps` timed steps each per round, so load on a shared machine falls on all of them alike.
Reported: the median step time over rounds, images/s, the time ratio to `--ref` and the number of steps at each size
that costs what `--ref-steps` steps at the `--ref` batch cost.

    python benchmarks/batch_step_time.py --threads 1 --batches 16 32 64 --rounds 7   # results/batch_step_time.md
    python benchmarks/batch_step_time.py --threads 2 --batches 16 32 64 --rounds 7   # …_2threads.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import throughput_child as child  # noqa: E402
from results_io import write_results  # noqa: E402
from throughput import loadavg  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def measure(model: str, stage: str, batches: list[int], rounds: int, steps: int, warmup: int) -> dict[int, list[float]]:
    """Per batch size, the per-step seconds of each round (rounds interleaved across the sizes)."""
    per_step: dict[int, list[float]] = {b: [] for b in batches}
    with tempfile.TemporaryDirectory() as work:
        trainers, step_fns = {}, {}
        for b in batches:
            spec = {"device": "cpu", "precision": "bf16", "batch": b, "model": model, "stage": stage,
                    "compile": False}
            trainers[b] = child._trainer(spec, child.CPU_MODELS, Path(work) / f"b{b}")
            step_fns[b] = child.steady_step(trainers[b])
        done = {b: 0 for b in batches}
        for b in batches:  # untimed warm-up of each
            for _ in range(warmup):
                step_fns[b](done[b])
                done[b] += 1
        for _ in range(rounds):
            for b in batches:
                t0 = time.perf_counter()
                for _ in range(steps):
                    step_fns[b](done[b])
                    done[b] += 1
                per_step[b].append((time.perf_counter() - t0) / steps)
        for t in trainers.values():
            t.close()
    return per_step


def table(result: dict) -> str:
    ref, ref_steps = result["ref"], result["ref_steps"]
    lines = [f"# Step time by batch size ({result['model']}, {result['stage']}, bf16, {result['threads']} thread(s); "
             f"median of {result['rounds']} interleaved rounds of {result['steps']} steps; load average "
             f"{result['load_before']} before, {result['load_after']} after)", "",
             f"Steps at equal time = steps costing what {ref_steps} steps at batch {ref} cost.", "",
             "| batch | ms / step | images / s | time vs batch " + str(ref) + f" | steps at equal time ({ref_steps} @ "
             f"{ref}) | images at equal time |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['batch']} | {row['ms_per_step']:.1f} | {row['images_per_s']:.0f} | "
                     f"{row['time_ratio']:.3f} | {row['steps_at_equal_time']} | {row['images_at_equal_time']} |")
    lines += ["", f"Rerun: `python benchmarks/batch_step_time.py --threads {result['threads']} --batches "
                  f"{' '.join(str(r['batch']) for r in result['rows'])} --rounds {result['rounds']}`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fmnist-tiny", choices=list(child.CPU_MODELS))
    p.add_argument("--stage", default="diffusion", choices=["pretrain", "diffusion", "consistency"])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--ref", type=int, default=64, help="the batch size the ratios are to (must be in --batches)")
    p.add_argument("--ref-steps", type=int, default=2000, help="the run length at --ref to match in time")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10, help="timed steps per size per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None,
                   help="results stem (default: results/batch_step_time, with _Nthreads beyond 1 thread)")
    a = p.parse_args(argv)
    if a.ref not in a.batches:
        p.error(f"--ref {a.ref} is not one of --batches {a.batches}: add it")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.out is None:
        a.out = RESULTS / ("batch_step_time" + (f"_{a.threads}threads" if a.threads != 1 else ""))
    before = loadavg()
    per_step = measure(a.model, a.stage, a.batches, a.rounds, a.steps, a.warmup)
    med = {b: statistics.median(v) for b, v in per_step.items()}
    equal = {b: round(a.ref_steps * med[a.ref] / med[b]) for b in a.batches}  # steps costing ref_steps at --ref
    rows = [{"batch": b, "ms_per_step": 1000 * med[b], "images_per_s": b / med[b], "time_ratio": med[b] / med[a.ref],
             "steps_at_equal_time": equal[b], "images_at_equal_time": equal[b] * b,
             "round_seconds": [round(s, 4) for s in per_step[b]]} for b in a.batches]
    result = {"model": a.model, "stage": a.stage, "threads": a.threads or torch.get_num_threads(),
              "rounds": a.rounds, "steps": a.steps, "ref": a.ref, "ref_steps": a.ref_steps,
              "load_before": before, "load_after": loadavg(), "rows": rows}
    write_results(a.out, table(result), result)


if __name__ == "__main__":
    main()
