"""`epg plot RUN_DIR`: loss (and FID / k-NN) curves from a run's log.jsonl to PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from epg.engine.runlog import read_log


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw every logged scalar worth a curve against images seen; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    log = run_dir / "log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{log}: no training log — is {run_dir} an epg run directory?")
    records = read_log(log)
    keys = [k for k in ("loss", "contrastive", "consistency", "mse", "cm", "aux", "fid", "knn_acc")
            if any(k in r for r in records)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * max(len(keys), 1), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["images"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if key in ("fid", "knn_acc") else None)
        ax.set_title(key)
        ax.set_xlabel("images seen")
        if key in ("loss", "mse", "cm") and all(p[1] > 0 for p in pts):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plot", help="draw a run's loss/FID curves to PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.set_defaults(func=lambda args: print(f"epg: curves → {plot_run(args.run_dir, args.out)}") or 0)
    return p
