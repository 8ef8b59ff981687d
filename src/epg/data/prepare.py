"""`epg prepare`: an ImageFolder tree (ImageNet train, or val with a label file) → a packed directory.

Every image is decoded to RGB and ADM-centre-cropped to res×res. Files are taken in a fixed order and cut
into shards of `shard_size` files; each shard is written atomically by one worker together with a small
`shard-NNNNN.json` record (labels, skipped files), and a rerun skips shards whose record exists, so an
interrupted preparation resumes where it stopped. Bad files are skipped and reported, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from epg.atomic import remove_stale

from .errors import DataError
from .folder import scan_class_folders, scan_flat_folder, shown
from .images import DecodeFailure, center_crop_arr, decode_rgb
from .packed import FORMAT, atomic_save_json, atomic_save_npy, shard_name, write_index

SETTINGS_NAME = "prepare.json"
REPORT_NAME = "prepare_report.json"
EXAMPLES_SHOWN = 10


def record_name(shard: int) -> str:
    """File name of the JSON record that marks shard number `shard` as finished."""
    return f"shard-{shard:05d}.json"


@dataclass(frozen=True)
class _ShardTask:
    shard: int
    src: Path
    out: Path
    resolution: int
    files: list[tuple[str, int]]  # (path relative to src, label)


def _write_shard(task: _ShardTask) -> int:
    """Decode, crop and save one shard, then its record; runs in a worker process."""
    images = np.empty((len(task.files), task.resolution, task.resolution, 3), dtype=np.uint8)
    labels: list[int] = []
    skipped: list[list[str]] = []
    converted: Counter[str] = Counter()
    for relative, label in task.files:
        try:
            image, mode = decode_rgb(task.src / relative)
            array = center_crop_arr(image, task.resolution)
        except DecodeFailure as failure:
            skipped.append([relative, failure.reason, str(failure)])
            continue
        except Exception as error:  # one odd file (or a Pillow bug) must not stop hours of preparation
            skipped.append([relative, "error", f"{type(error).__name__}: {error}"])
            continue
        if mode != "RGB":
            converted[mode] += 1
        images[len(labels)] = array
        labels.append(label)
    atomic_save_npy(task.out / shard_name(task.shard), images[: len(labels)])
    record = {"count": len(labels), "labels": labels, "skipped": skipped, "converted": dict(converted)}
    atomic_save_json(task.out / record_name(task.shard), record)
    return task.shard


def _settings(src: Path, entries: list[tuple[str, int]], class_names: list[str], resolution: int, shard_size: int,
              ) -> dict[str, Any]:
    digest = hashlib.sha256()
    for relative, label in entries:
        digest.update(os.fsencode(relative) + f"\t{label}\n".encode())  # names need not be UTF-8
    digest.update("\n".join(class_names).encode())
    return {"format": FORMAT, "source": str(src), "resolution": resolution, "shard_size": shard_size,
            "num_files": len(entries), "files_sha256": digest.hexdigest()}


def _check_or_save_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / SETTINGS_NAME
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError as error:
            raise DataError(f"{path} is unreadable ({error}): delete {out} to start over") from error
        # The source may have moved: what must match is what ends up in the shards.
        differ = [key for key in settings if key != "source" and previous.get(key) != settings[key]]
        if differ:
            raise DataError(f"{out} holds a preparation with other {', '.join(differ)}: choose another --out, or "
                            f"delete {out} to start over")
    atomic_save_json(path, settings)


def _run_tasks(tasks: list[_ShardTask], workers: int, bar: tqdm, on_shard_done: Callable[[int], None] | None) -> None:
    sizes = {task.shard: len(task.files) for task in tasks}

    def finished(shard: int) -> None:
        bar.update(sizes[shard])
        if on_shard_done is not None:
            on_shard_done(shard)

    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            finished(_write_shard(task))
        return
    # Unlike multiprocessing.Pool, this raises (rather than hangs) when a worker is killed, e.g. by OOM.
    executor = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context())
    try:
        for future in as_completed([executor.submit(_write_shard, task) for task in tasks]):
            finished(future.result())
    finally:
        # On an error, let running shards finish (each is atomic) but start no new one.
        executor.shutdown(wait=True, cancel_futures=True)


def _summarise(src: Path, records: list[dict[str, Any]], resolution: int, num_files: int, notes: list[str],
               ) -> dict[str, Any]:
    skipped = [entry for record in records for entry in record["skipped"]]
    converted: Counter[str] = Counter()
    for record in records:
        converted.update(record["converted"])
    return {
        "source": str(src),
        "resolution": resolution,
        "files_found": num_files,
        "images_written": sum(record["count"] for record in records),
        "skipped_by_reason": dict(sorted(Counter(reason for _, reason, _ in skipped).items())),
        "converted_to_rgb_by_mode": dict(sorted(converted.items())),
        "skipped": [{"path": shown(path), "reason": reason, "detail": shown(detail)}
                    for path, reason, detail in skipped],
        "notes": notes,
    }


def format_report(report: dict[str, Any]) -> str:
    """The human summary of a preparation report (what `epg prepare` prints at the end)."""
    lines = [f"prepared {report['images_written']} of {report['files_found']} images of {report['source']} at "
             f"{report['resolution']}×{report['resolution']}"]
    if report["skipped"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in report["skipped_by_reason"].items())
        lines.append(f"skipped {len(report['skipped'])} files ({reasons}):")
        lines += [f"  {e['path']}: {e['reason']} ({e['detail']})" for e in report["skipped"][:EXAMPLES_SHOWN]]
        if len(report["skipped"]) > EXAMPLES_SHOWN:
            lines.append(f"  … {len(report['skipped']) - EXAMPLES_SHOWN} more in {REPORT_NAME}")
    lines += [f"note: {note}" for note in report.get("notes", [])]
    if report["converted_to_rgb_by_mode"]:
        modes = ", ".join(f"{mode} {n}" for mode, n in report["converted_to_rgb_by_mode"].items())
        lines.append(f"converted to RGB: {modes}")
    return "\n".join(lines)


def prepare_folder(src: str | Path, out: str | Path, resolution: int, workers: int = 1, shard_size: int = 1024,
                   val_labels: str | Path | None = None, class_names: list[str] | None = None,
                   on_shard_done: Callable[[int], None] | None = None, progress: bool = True) -> dict[str, Any]:
    """Pack the ImageFolder tree `src` (or flat folder + `val_labels`) into `out`; returns the report.

    `class_names` fixes the label order (e.g. the training set's classes.json); `on_shard_done(shard)` is
    called in this process after each newly written shard. Resumes an interrupted run into the same `out`.
    """
    src, out = Path(src), Path(out)
    if resolution < 1 or shard_size < 1:
        raise DataError(f"resolution and shard size must be positive, got {resolution} and {shard_size}")
    if not src.is_dir():
        raise DataError(f"source folder {src} does not exist")
    notes: list[str] = []
    if val_labels is not None:
        files, labels, class_names = scan_flat_folder(src, Path(val_labels), class_names)
    else:
        files, labels, class_names = scan_class_folders(src, class_names, notes)
    entries = [(str(path.relative_to(src)), label) for path, label in zip(files, labels)]
    out.mkdir(parents=True, exist_ok=True)
    _check_or_save_settings(out, _settings(src, entries, class_names, resolution, shard_size))
    remove_stale(out)  # temporaries left by a run killed mid-write

    chunks = [entries[start : start + shard_size] for start in range(0, len(entries), shard_size)]
    done = {k for k in range(len(chunks)) if (out / record_name(k)).is_file() and (out / shard_name(k)).is_file()}
    tasks = [_ShardTask(k, src, out, resolution, chunk) for k, chunk in enumerate(chunks) if k not in done]
    with tqdm(total=len(entries), initial=sum(len(chunks[k]) for k in done), unit="img", desc="prepare",
              disable=not progress, dynamic_ncols=True) as bar:
        _run_tasks(tasks, workers, bar, on_shard_done)

    records = [json.loads((out / record_name(k)).read_text()) for k in range(len(chunks))]
    report = _summarise(src, records, resolution, len(entries), notes)
    atomic_save_json(out / REPORT_NAME, report)
    if report["images_written"] == 0:
        raise DataError(f"no image of {src} could be read; see {out / REPORT_NAME}")
    shard_labels = [np.asarray(record["labels"], dtype=np.int64) for record in records]
    write_index(out, [record["count"] for record in records], np.concatenate(shard_labels), resolution, class_names)
    return report
