"""A resumable, rank-sharded stream of training samples.

The training data is one endless stream: sample position ``p`` (0, 1, 2, ...) maps to
epoch ``p // n`` and index ``perm_epoch[p % n]`` of a per-epoch permutation drawn from
``seed + epoch``. Optimizer step ``s`` consumes positions ``[s*B, (s+1)*B)`` of the global
batch ``B = world_size * accum_steps * b``; micro-batch ``m`` of rank ``r`` takes
``s*B + m*world_size*b + r*b + [0, b)``. Consequences:

* the data of a step does not depend on how it is split over ranks, so 1 process with
  batch ``B`` and 2 processes with batch ``B/2`` each see the same images;
* resuming only needs the position (``samples_seen``), stored in the checkpoint;
* every sample carries its own augmentation seed (a function of ``seed`` and ``p``), and
  :class:`SeededDataset` runs ``dataset[i]`` with python/numpy/torch RNGs seeded from it,
  so augmentations are identical with any number of loader workers, ranks or resumes.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_SEED_MIX = 1_000_003


def sample_seed(seed: int, position: int) -> int:
    """The augmentation seed of stream position ``position`` (a 31-bit int)."""
    return (seed * _SEED_MIX + position * 2_654_435_761 + 12_345) % (2**31 - 1)


class StreamBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yield this rank's micro-batches of ``(dataset_index, sample_seed)`` forever.

    Args:
        dataset_size: ``n``, number of samples in the dataset.
        micro_batch: ``b``, images per rank per forward pass.
        world_size / rank: the process group layout.
        accum_steps: micro-batches per optimizer step.
        seed: shuffling and augmentation seed.
        start_position: first stream position (``samples_seen`` of a checkpoint).
        shuffle: permute each epoch (else ``0..n-1`` in order).

    Raises:
        ValueError: ``dataset_size == 0`` or ``start_position`` not at a step boundary.
    """

    def __init__(self, dataset_size: int, micro_batch: int, *, world_size: int = 1, rank: int = 0,
                 accum_steps: int = 1, seed: int = 0, start_position: int = 0,
                 shuffle: bool = True) -> None:
        if dataset_size <= 0:
            raise ValueError("the training dataset is empty")
        self.n = int(dataset_size)
        self.b = int(micro_batch)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.accum_steps = int(accum_steps)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.global_batch = self.b * self.world_size * self.accum_steps
        if start_position % self.global_batch:
            raise ValueError(f"start position {start_position} is not a multiple of the global "
                             f"batch {self.global_batch} (was the batch size changed on resume?)")
        self.start_position = int(start_position)
        self._perm_cache: tuple[int, list[int]] | None = None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if not self.shuffle:
            return offset
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm_cache = (epoch, torch.randperm(self.n, generator=g).tolist())
        return self._perm_cache[1][offset]

    def positions(self, step_start: int, micro: int) -> range:
        """Stream positions of micro-batch ``micro`` of the step starting at ``step_start``."""
        first = step_start + micro * self.world_size * self.b + self.rank * self.b
        return range(first, first + self.b)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step_start = self.start_position
        while True:
            for m in range(self.accum_steps):
                yield [(self._index(p), sample_seed(self.seed, p))
                       for p in self.positions(step_start, m)]
            step_start += self.global_batch

    def __len__(self) -> int:  # an endless stream; DataLoader only needs it to exist
        return 2**62


class SeededDataset(Dataset):
    """Wrap a map-style dataset so that ``ds[(i, seed)]`` runs ``base[i]`` under fixed RNGs.

    The python, numpy and torch (CPU) global generators are seeded with ``seed`` for the
    call and restored afterwards, so augmentations are reproducible and the caller's RNG
    streams (drop path, loss sampling) are untouched.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            try:
                return self.base[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def split_micro_batch(global_batch: int, world_size: int, accum_steps: int) -> int:
    """Per-rank micro-batch ``b = global_batch / (world_size * accum_steps)``.

    Raises:
        ValueError: the global batch does not divide evenly.
    """
    denom = world_size * accum_steps
    if global_batch <= 0 or global_batch % denom:
        raise ValueError(f"solver.batch_size={global_batch} must be a positive multiple of "
                         f"world_size ({world_size}) x solver.grad_accum_steps ({accum_steps})")
    return global_batch // denom

