"""Sample grids: one row per class (engine/runlog.py)."""

from __future__ import annotations

import numpy as np
import torch

from epg.engine.runlog import class_rows, image_grid


def test_class_rows_takes_the_first_of_each_class_in_class_order():
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])
    assert class_rows(labels, 2).tolist() == [1, 3, 2, 5, 0, 4]
    assert class_rows(labels, 3).tolist() == [1, 3, 6, 2, 5, 8, 0, 4, 7]


def test_class_rows_lays_out_a_balanced_set_row_by_row():
    labels = torch.randperm(1000) % 10  # 100 per class, shuffled
    order = class_rows(labels, 10)
    assert labels[order].tolist() == [c for c in range(10) for _ in range(10)]
    images = labels[order].to(torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2) * 20
    grid = torch.from_numpy(np.asarray(image_grid(images, 10)).copy())
    assert grid.shape == (20, 20)
    for row in range(10):  # every pixel of grid row r shows class r
        assert bool((grid[2 * row:2 * row + 2] == row * 20).all())
