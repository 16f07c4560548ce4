"""Batching and reproducible data loading.

``collate_panoptic`` stacks images into ``images`` float32 ``[B, 3, H, W]`` (padding images
of different sizes, the padding void in the targets) and keeps per-image targets as a list
(their M differ). Worker seeding follows the PyTorch
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


def collate_panoptic(samples: Sequence[dict[str, Any]], *, size_divisor: int = 1,
                     pad_value: float | Sequence[float] = 127.5,
                     ignore_label: int | None = None) -> dict[str, Any]:
    """Collate dataset samples into a batch, padding images of different sizes.

    Images of one size whose sides are multiples of ``size_divisor`` are stacked as they are
    (the fixed-canvas families: kMaX, MaX). Otherwise every image is padded bottom/right to
    the largest height and width, rounded up to a multiple of ``size_divisor`` (K-Net: 32),
    and the padding is void in the targets: ``void`` True, ``masks`` False, ``semantic``
    ``ignore_label``.

    Args:
        samples: sample dicts (see :class:`~kmax_deeplab.data.coco_panoptic.COCOPanopticDataset`).
        size_divisor: batch height and width are multiples of this (1 = no rounding).
        pad_value: image padding, one value or one per RGB channel (0..255 units; the
            geometry's ``pixel_mean``, i.e. 0 after normalisation).
        ignore_label: ``semantic`` of padded pixels (C, the dataset's void train id); needed
            only when padding happens.

    Returns:
        ``{"images": float32 [B, 3, H, W], "targets": list of B dicts}``; each target holds
        every key of its sample except ``image`` (``valid_size`` stays the image's own region).

    Raises:
        ValueError: empty batch, or padding needed without ``ignore_label``.
    """
    if not samples:
        raise ValueError("collate_panoptic: empty batch")
    div = max(1, int(size_divisor))
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) == 1 and all(d % div == 0 for d in next(iter(shapes))[-2:]):
        images = torch.stack([s["image"] for s in samples])
        targets = [{k: v for k, v in s.items() if k != "image"} for s in samples]
        return {"images": images, "targets": targets}
    if ignore_label is None:
        raise ValueError(f"collate_panoptic: images of different sizes {sorted(shapes)} (or not multiples "
                         f"of {div}) need padding; pass ignore_label (the semantic void id, C), or use a "
                         "fixed crop size")
    height = -(-max(s["image"].shape[-2] for s in samples) // div) * div
    width = -(-max(s["image"].shape[-1] for s in samples) // div) * div
    images = torch.empty((len(samples), 3, height, width), dtype=torch.float32)
    images[:] = torch.as_tensor(pad_value, dtype=torch.float32).reshape(-1, 1, 1)
    targets = []
    for i, s in enumerate(samples):
        h, w = s["image"].shape[-2:]
        images[i, :, :h, :w] = s["image"]
        t = {k: v for k, v in s.items() if k != "image"}
        pad = (0, width - w, 0, height - h)
        if "masks" in t:
            t["masks"] = torch.nn.functional.pad(t["masks"], pad, value=False)
        if "void" in t:
            t["void"] = torch.nn.functional.pad(t["void"], pad, value=True)
        if "semantic" in t:
            t["semantic"] = torch.nn.functional.pad(t["semantic"], pad, value=int(ignore_label))
        if "sem_seg" in t:  # semantic-task label maps: 255 is their ignore value
            t["sem_seg"] = torch.nn.functional.pad(t["sem_seg"], pad, value=255)
        targets.append(t)
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
