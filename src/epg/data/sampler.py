"""Which samples each process reads at each step: a pure function of (seed, step, rank) (exact resume)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from epg.rng import mix_seed


class GlobalBatchSampler:
    """Yields, for every step from `start_step`, this rank's micro-batches of (dataset index, stream position).

    The training stream is the concatenation of one seeded permutation per epoch; global step k reads
    positions [k·B, (k+1)·B). Rank r of W takes the r-th contiguous slice of B/W positions and splits it into
    micro-batches. Together the ranks cover each global batch exactly once.
    """

    def __init__(self, dataset_len: int, global_batch: int, rank: int, world: int, micro_batch: int, seed: int,
                 start_step: int = 0, steps: int | None = None):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
        local = global_batch // world
        if local % micro_batch:
            raise ValueError(f"per-process batch {local} is not divisible by the micro-batch {micro_batch}")
        if dataset_len <= 0:
            raise ValueError("the dataset is empty")
        self.n, self.batch, self.rank, self.local, self.micro = dataset_len, global_batch, rank, local, micro_batch
        self.seed, self.start_step, self.steps = seed, start_step, steps
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        epoch = position // self.n
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, "data-order"))
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return int(self._perm[position % self.n])

    def positions(self, step: int) -> range:
        """This rank's stream positions at a step."""
        start = step * self.batch + self.rank * self.local
        return range(start, start + self.local)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.steps is None or step < self.steps:
            pos = list(self.positions(step))
            for i in range(0, self.local, self.micro):
                yield [(self._index(p), p) for p in pos[i:i + self.micro]]
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless sampler has no length")
        return (self.steps - self.start_step) * (self.local // self.micro)
