"""Turn a loaded (and possibly transformed) record into the sample dict of the shared contract.

A *record* is the intermediate form the transforms work on (cheap to crop/flip/resize):

- ``image`` float32 ``[H, W, 3]`` RGB 0..255;
- ``panoptic`` int64 ``[H, W]`` segment ids; ``PAD_ID`` (-1) marks padding;
- ``segments`` list of ``{"id", "category_id", "train_id", "iscrowd"}``;
- ``image_id``, ``file_name``, ``height``, ``width`` (original size) and optionally
  ``valid_size`` ``(h, w)``, the image region of a padded canvas.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kmax_deeplab.data.catalog import DatasetMeta

__all__ = ["PAD_ID", "build_sample"]

PAD_ID = -1
"""Segment id of padded pixels inside a record (never a real segment id)."""


def build_sample(record: dict[str, Any], meta: DatasetMeta) -> dict[str, Any]:
    """Build the training/eval sample from a record.

    Only segments that still have pixels are kept (a crop may remove some), in the order
    of ``segments``. Void pixels are those covered by no non-crowd segment: unlabelled
    pixels, crowd regions and padding (bytedance mapper: crowd segments get no mask loss
    and semantic label -1; spec §2 "Crowd regions and padding are void").

    Returns:
        dict with ``image`` float32 ``[3, H, W]``, ``masks`` bool ``[M, H, W]``, ``labels``
        int64 ``[M]`` (train ids), ``is_crowd`` bool ``[M]``, ``void`` bool ``[H, W]``,
        ``semantic`` int64 ``[H, W]`` (void = ``meta.num_classes``), ``segment_ids`` int64
        ``[M]``, ``image_id``, ``file_name``, ``height``, ``width``, ``valid_size``.
    """
    ids = record["panoptic"]
    all_ids = np.array([s["id"] for s in record["segments"]], dtype=np.int64)
    # Index of each pixel's segment in ``record["segments"]`` (-1: unlisted/void/padding),
    # via a sorted lookup: [H, W] ids -> [H, W] segment index.
    order = np.argsort(all_ids, kind="stable")
    index = np.full(ids.shape, -1, dtype=np.int64)
    if all_ids.size:
        pos = np.minimum(np.searchsorted(all_ids[order], ids), all_ids.size - 1)
        hit = (all_ids[order][pos] == ids) & (ids != PAD_ID)
        index[hit] = order[pos[hit]]
    present = np.zeros(all_ids.size + 1, dtype=bool)
    present[np.unique(index) + 1] = True
    keep = np.flatnonzero(present[1:])  # segments that still have pixels, in listed order
    segs = [record["segments"][k] for k in keep]
    seg_ids = all_ids[keep]
    # [H, W] segment index vs [M] kept indices -> [M, H, W] boolean masks.
    masks = index[None, :, :] == keep[:, None, None]
    labels = np.array([s["train_id"] for s in segs], dtype=np.int64)
    crowd = np.array([bool(s["iscrowd"]) for s in segs], dtype=bool)
    # Per listed segment: its semantic label, or C for crowd; index -1 (last entry) -> C.
    lut = np.full(all_ids.size + 1, meta.num_classes, dtype=np.int64)
    for s_k, k in zip(segs, keep):
        if not s_k["iscrowd"]:
            lut[k] = s_k["train_id"]
    semantic = lut[index]
    void = semantic == meta.num_classes
    image = np.ascontiguousarray(record["image"].transpose(2, 0, 1), dtype=np.float32)
    h, w = ids.shape
    return {
        "image": torch.from_numpy(image),
        "masks": torch.from_numpy(masks),
        "labels": torch.from_numpy(labels),
        "is_crowd": torch.from_numpy(crowd),
        "void": torch.from_numpy(void),
        "semantic": torch.from_numpy(semantic),
        "segment_ids": torch.from_numpy(seg_ids),
        "image_id": record["image_id"],
        "file_name": record["file_name"],
        "height": int(record["height"]),
        "width": int(record["width"]),
        "valid_size": tuple(record.get("valid_size", (h, w))),
    }
