"""What a run shows its user: a progress bar, a JSON-lines log, TensorBoard scalars and PNG sample grids."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from epg.atomic import atomic_write


def image_grid(images: torch.Tensor, cols: int | None = None, gap: int = 0, scale: int = 1) -> Image.Image:
    """uint8 NCHW images → one PIL image tiled in a near-square grid (grey for 1 channel).

    Each tile is upscaled `scale`× (nearest neighbour); `gap` white pixels separate the tiles.
    """
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255 if gap else 0, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = arr[i]
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def class_rows(labels: torch.Tensor, per_class: int = 10) -> torch.Tensor:
    """Indices that lay a labelled sample set out as one row per class: the first `per_class` of each class,
    classes in increasing order (a class with fewer samples gets a shorter share)."""
    rows = [torch.nonzero(labels == c).flatten()[:per_class] for c in torch.unique(labels, sorted=True)]
    return torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)


def save_image_grid(images: torch.Tensor, path: Path, cols: int | None = None, scale: int = 1,
                    gap: int = 2) -> Path:
    """Write a sample grid PNG: tiles upscaled `scale`× for small images, `gap` white pixels between them."""
    img = image_grid(images, cols, gap=gap, scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: img.save(f, format="PNG"))
    return path


def grid_order(labels: torch.Tensor | None, n: int, max_tiles: int = 100) -> tuple[torch.Tensor, int | None]:
    """(indices, columns) for a sample grid: one row per class in class order when labelled, else the first n."""
    if labels is None:
        return torch.arange(min(n, max_tiles)), None
    classes, counts = torch.unique(labels, return_counts=True)
    if len(classes) > 16:  # many classes (ImageNet): one tile per class, classes in order, near-square
        return class_rows(labels, 1)[:max_tiles], None
    per = max(1, min(10, max_tiles // len(classes), int(counts.min())))  # every row as long as the others
    return class_rows(labels, per), per


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl since its last restart: torn or garbled lines (a crash mid-write) are
    left out, and a step logged twice keeps its first record."""
    records: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("event") == "restart":
            records = {}
        elif "step" in record:
            records.setdefault(record["step"], record)
    return [records[k] for k in sorted(records)]


class LogWindow:
    """Sums of the loss terms since the last log step (kept on the device), and their means at a log step.

    `state()` is what a checkpoint stores so that a resumed run's next log line averages the same steps."""

    def __init__(self, step: int, state: dict[str, Any], device: torch.device):
        self.sums = {k: torch.tensor(v, device=device) for k, v in state.get("sums", {}).items()}
        self.since = state.get("since", step)
        self.t0, self.timed = time.perf_counter(), step

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def close(self, step: int, images_per_step: int) -> dict[str, Any]:
        """Means over the window (tensors; the caller reduces them over ranks) and img/s; opens the next one."""
        n, elapsed = step - self.since, time.perf_counter() - self.t0
        means: dict[str, Any] = {k: v / n for k, v in self.sums.items()}
        means["img_per_s"] = (step - self.timed) * images_per_step / max(elapsed, 1e-9)
        self.sums, self.since, self.t0, self.timed = {}, step, time.perf_counter(), step
        return means

    def state(self) -> dict[str, Any]:
        return {"since": self.since, "sums": {k: float(v) for k, v in self.sums.items()}}


class RunLogger:
    """Rank-0 logging; other ranks get a logger whose methods do nothing."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int, total_steps: int, images_per_step: int,
                 restart: bool = False):
        self.enabled = enabled
        self.run_dir = run_dir
        self.images_per_step = images_per_step
        self.log_path = run_dir / "log.jsonl"
        self.bar = None
        self.tb = None
        self.last_logged = 0
        if not enabled:
            return
        self._open_log(start_step, restart)
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        desc=run_dir.name)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)
        except ImportError:  # TensorBoard is optional: the JSON-lines log is the record
            self.tb = None
            tqdm.write("epg: TensorBoard is not installed, so no tb/ logs (log.jsonl has every value); "
                       "pip install 'epg[tensorboard]' for them")

    def _open_log(self, start_step: int, restart: bool) -> None:
        """log.jsonl is only appended to: a torn last line (a crash mid-write) is cut off, steps a resumed run
        replays are not written twice, and a restart is a marker line after which the log begins anew."""
        if not self.log_path.exists():
            return
        data = self.log_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            os.truncate(self.log_path, keep)
            self.message(f"epg: {self.log_path}: dropped a torn last line ({len(data) - keep} bytes) left by a crash")
        if restart:
            self._append({"event": "restart", "step": start_step})
            return
        steps = [r["step"] for r in read_log(self.log_path)]
        self.last_logged = max(steps, default=0)

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if step > self.last_logged:  # else the interrupted run already logged this step
            self._append({"step": step, "images": step * self.images_per_step, **values})
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.bar is not None:
            shown = {k: v for k, v in values.items() if k in ("loss", "img_per_s", "fid", "knn_acc")}
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def message(self, text: str) -> None:
        if self.enabled:
            (tqdm.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
