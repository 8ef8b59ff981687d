"""What a run shows its user: a progress bar, a JSON-lines log, TensorBoard scalars and PNG sample grids."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm


def image_grid(images: torch.Tensor, cols: int | None = None, gap: int = 0, scale: int = 1,
               gap_value: int = 255) -> Image.Image:
    """uint8 NCHW images → one PIL image tiled in a near-square grid (grey for 1 channel).

    Each tile is upscaled `scale`× (nearest neighbour); `gap` pixels of `gap_value` separate the tiles.
    """
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), gap_value if gap else 0, dtype=np.uint8)
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
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
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


class RunLogger:
    """Rank-0 logging; other ranks get a logger whose methods do nothing."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int, total_steps: int, images_per_step: int):
        self.enabled = enabled
        self.run_dir = run_dir
        self.images_per_step = images_per_step
        self.log_path = run_dir / "log.jsonl"
        self.bar = None
        self.tb = None
        if not enabled:
            return
        self._truncate_after(start_step)
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        desc=run_dir.name)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)
        except ImportError:  # TensorBoard is optional: the JSON-lines log is the record
            self.tb = None

    def _truncate_after(self, step: int) -> None:
        # A resumed run replays steps after its checkpoint: drop the killed run's entries for them.
        if not self.log_path.exists():
            return
        keep = [line for line in self.log_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.log_path.write_text("".join(line + "\n" for line in keep))

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "images": step * self.images_per_step, **values}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
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
