"""The `epg prepare` subcommand."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .errors import DataError
from .prepare import REPORT_NAME, format_report, prepare_folder

KINDS = ("imagenet", "folder")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `prepare` on the `epg` command line; the handler is `args.func`."""
    parser = subparsers.add_parser(
        "prepare", help="pack ImageNet (or any ImageFolder tree) into memory-mapped shards at one resolution",
        description="Decode every image of SRC to RGB, centre-crop it to RES×RES as ADM does (halve with BOX while the "
                    "short side ≥ 2·RES, BICUBIC to RES, central square) and write uint8 .npy shards, index.json, "
                    "labels.npy and classes.json to OUT. Labels come from the sorted class-folder names (ImageNet "
                    "wnids). Bad files are skipped and listed in OUT/prepare_report.json. Rerunning the same command "
                    "resumes an interrupted run.")
    parser.add_argument("kind", choices=KINDS, help="imagenet and folder are processed alike (ImageFolder layout)")
    parser.add_argument("--src", required=True, type=Path, help="the tree: SRC/<class>/<image>, or a flat folder")
    parser.add_argument("--res", required=True, type=int, help="output resolution, e.g. 256 or 512")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created; resumable)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    parser.add_argument("--shard-size", type=int, default=1024,
                        help="images per shard file; each worker holds one shard in RAM (1024 at 512² ≈ 0.8 GB)")
    parser.add_argument("--val-labels", type=Path, default=None,
                        help="for a flat validation folder: lines `filename wnid`, or ImageNet's LOC_val_solution.csv")
    parser.add_argument("--classes", type=Path, default=None,
                        help="classes.json of the training set, so validation labels use the same indices")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def _read_classes(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"cannot read the class list {path} ({error.strerror})") from error
    try:
        names = json.loads(text)
    except ValueError:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path} is not a class list (a JSON list of names, or one name per line)")
    return names


def run(args: argparse.Namespace) -> int:
    """Run `epg prepare`; returns the exit status (DataError propagates for the CLI to print)."""
    class_names = _read_classes(args.classes) if args.classes is not None else None
    report = prepare_folder(args.src, args.out, args.res, workers=args.workers, shard_size=args.shard_size,
                            val_labels=args.val_labels, class_names=class_names, progress=not args.quiet)
    print(format_report(report))
    print(f"packed dataset: {args.out} (report: {args.out / REPORT_NAME})")
    return 0
