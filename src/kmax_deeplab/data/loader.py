"""Batching and reproducible data loading.

``collate_panoptic`` stacks images into ``images`` float32 ``[B, 3, H, W]`` and keeps
per-image targets as a list (their M differ). Worker seeding follows the PyTorch
reproducibility recipe: the DataLoader derives each worker's torch seed from its
``generator``; :func:`seed_worker` propagates it to ``numpy`` and ``random``.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["collate_panoptic", "seed_worker", "worker_init_fn", "build_dataloader"]


def collate_panoptic(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate dataset samples into a batch.

    Args:
        samples: sample dicts (see :class:`~kmax_deeplab.data.coco_panoptic.COCOPanopticDataset`),
            all with images of one size.

    Returns:
        ``{"images": float32 [B, 3, H, W], "targets": list of B dicts}``; each target holds
        every key of its sample except ``image``.

    Raises:
        ValueError: empty batch or images of different sizes (use a fixed crop/canvas).
    """
    if not samples:
        raise ValueError("collate_panoptic: empty batch")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate_panoptic: images of different sizes {sorted(shapes)}; "
                         "use a fixed crop size or ResizeLongestAndPad")
    images = torch.stack([s["image"] for s in samples])
    targets = [{k: v for k, v in s.items() if k != "image"} for s in samples]
    return {"images": images, "targets": targets}


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


worker_init_fn = seed_worker


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = True,
    sampler: Sampler | None = None,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """Build a reproducible DataLoader with :func:`collate_panoptic`.

    The same ``seed`` gives the same order and the same augmentations for any
    ``num_workers`` value that is kept fixed between runs.

    Args:
        dataset: a map-style dataset of panoptic samples.
        batch_size: images per batch (per process under DDP).
        shuffle: shuffle (ignored when ``sampler`` is given, e.g. a DistributedSampler).
        num_workers: loader worker processes.
        seed: seed of the loader's generator (order and per-worker seeds).
        drop_last: drop a last incomplete batch.
        sampler: optional sampler.
        pin_memory: pin host memory (CUDA training).
        persistent_workers: keep workers alive between epochs (default: when workers > 0).
    """
    g = torch.Generator()
    g.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_panoptic,
        worker_init_fn=seed_worker,
        generator=g,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=(num_workers > 0) if persistent_workers is None else persistent_workers,
    )
