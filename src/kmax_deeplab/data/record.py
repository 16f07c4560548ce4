"""Turn a loaded (and possibly transformed) record into the sample dict of the shared contract.

A *record* is the intermediate form the transforms work on (cheap to crop/flip/resize):

- ``image`` uint8 (from the dataset) or float32 ``[H, W, 3]`` RGB 0..255;
- ``panoptic`` int32 (from the dataset) or int64 ``[H, W]`` segment ids; ``PAD_ID`` (-1)
  marks padding;
- ``segments`` list of ``{"id", "category_id", "train_id", "iscrowd"}`` (the dataset adds
  ``"isthing"``, which copy-paste needs);
- ``image_id``, ``file_name``, ``height``, ``width`` (original size) and optionally
  ``valid_size`` ``(h, w)``, the image region of a padded canvas, and ``pad_value``, the
  image value of ``PAD_ID`` pixels in the float sample (set by ``pad_to``).
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
    n = len(record["segments"])
    all_ids = np.array([s["id"] for s in record["segments"]], dtype=np.int64)
    # Index of each pixel's segment in ``record["segments"]`` (-1: unlisted/void/padding),
    # via a sorted lookup: [H, W] ids -> [H, W] segment index.
    order = np.argsort(all_ids, kind="stable")
    index_dtype = np.int16 if n < 2**15 - 1 else np.int32  # small: the mask comparison below is memory-bound
    index = np.full(ids.shape, -1, dtype=index_dtype)
    if n:
        sorted_ids = all_ids[order]
        if ids.dtype == np.int32 and -2**31 <= sorted_ids[0] and sorted_ids[-1] < 2**31:
            sorted_ids = sorted_ids.astype(np.int32)  # compare in the map's dtype (no int64 copy)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), n - 1)
        hit = (sorted_ids[pos] == ids) & (ids != PAD_ID)
        index[hit] = order[pos[hit]]
    counts = np.bincount(index.ravel() + 1, minlength=n + 1)
    keep = np.flatnonzero(counts[1:])  # segments that still have pixels, in listed order
    segs = [record["segments"][k] for k in keep]
    seg_ids = all_ids[keep]
    m = keep.size
    h, w = ids.shape
    # [H, W] segment index vs [M] kept indices -> [M, H, W] boolean masks.
    masks = index[None, :, :] == keep.astype(index_dtype)[:, None, None]
    labels = np.array([s["train_id"] for s in segs], dtype=np.int64)
    crowd = np.array([bool(s["iscrowd"]) for s in segs], dtype=bool)
    # Per listed segment: its semantic label, or C for crowd; index -1 (first entry) -> C.
    lut = np.full(n + 1, meta.num_classes, dtype=np.int64)
    for s_k, k in zip(segs, keep):
        if not s_k["iscrowd"]:
            lut[k + 1] = s_k["train_id"]
    semantic = lut[index + 1]
    void = semantic == meta.num_classes
    src = record["image"]
    # [H, W, 3] -> [3, H, W] float32 (one copy, from uint8 or float).
    image = torch.empty((3, h, w), dtype=torch.float32)
    image.copy_(torch.from_numpy(np.ascontiguousarray(src)).permute(2, 0, 1))
    if "pad_value" in record:
        pad = torch.from_numpy(ids == PAD_ID)
        image.masked_fill_(pad[None], float(record["pad_value"]))
    return {
        "image": image,
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
