"""Stride-4 loss targets from full-resolution panoptic targets (spec §2).

The kMaX losses supervise the stride-4 mask logits with ground truth obtained by *strided
subsampling* (``label[::4, ::4]``; 1281 -> 321, in general H = 32k+1 -> h = (H-1)/4+1), not by
resizing. Crowd segments and padding are void. This mirrors the bytedance (BD) dataset mapper
``PanoptickMaXDeepLabDatasetMapper``: it subsamples the panoptic map, keeps only non-crowd
segments that still have pixels, and builds the semantic target from those segments only, so
crowd, padding and unlabelled pixels carry the ignore class (BD: -1, here C).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["prepare_targets", "prepare_image_targets", "pixel_mask_area"]


def pixel_mask_area(masks: Tensor) -> Tensor:
    """Per-pixel area of the ground-truth mask that covers each pixel.

    Used by the Gumbel top-k pixel sampler (spec §2, L_insdis and L_sem): a pixel's sampling
    logit is ``tau * log(h*w / area)``. Overlapping masks add their areas (BD computes this as
    ``einsum('bnhw,bn->bhw', masks, areas)``); uncovered (void) pixels get 0.

    Args:
        masks: ``[..., M, h, w]`` bool or float masks (float masks may be soft, e.g. the
            overlap-normalised matched targets).

    Returns:
        ``[..., h, w]`` float32 area in pixels (at the masks' resolution).
    """
    masks = masks.float()
    areas = masks.sum(dim=(-2, -1))  # [..., M]
    # [..., M, h, w] x [..., M] -> [..., h, w]
    return torch.einsum("...mhw,...m->...hw", masks, areas)


def _check(cond: bool, index: int, message: str) -> None:
    if not cond:
        raise ValueError(f"prepare_targets: target {index}: {message}")


def prepare_image_targets(
    target: Dict[str, Tensor],
    num_classes: int,
    *,
    stride: int = 4,
    index: int = 0,
    small_instance_threshold: int = 0,
    small_instance_weight: float = 1.0,
    thing_classes: Optional[Sequence[int]] = None,
) -> Dict[str, Tensor]:
    """Subsample one image's panoptic target to the loss resolution.

    Args:
        target: dict with ``masks`` bool ``[M, H, W]``, ``labels`` int64 ``[M]`` train ids in
            ``[0, C)``, ``is_crowd`` bool ``[M]`` and ``void`` bool ``[H, W]`` (padding and
            unlabelled pixels). A ``semantic`` key, if present, is not read: the stride-4
            semantic target is rebuilt from the kept segments as BD does.
        num_classes: C; the ignore index of the semantic target.
        stride: subsampling step (4 for kMaX).
        index: position in the batch, used in error messages only.
        small_instance_threshold / small_instance_weight / thing_classes: deeplab2's
            ``increase_small_instance_weights`` (``data/sample_generator.py``,
            ``_generate_gt_center_and_offset``): the pixels of every non-crowd *thing*
            segment (train id in ``thing_classes``) with fewer than
            ``small_instance_threshold`` pixels **at full resolution** (after the
            augmentation, before the subsampling) get semantic-loss weight
            ``small_instance_weight``; all other pixels 1. deeplab2's MaX-L COCO recipe:
            4096 and 3.0; off (weight 1.0) by default.

    Returns:
        dict with ``masks`` bool ``[M', h, w]`` (non-crowd segments still present after
        subsampling, in input order), ``labels`` int64 ``[M']``, ``void`` bool ``[h, w]``
        (exactly the pixels covered by no kept mask: padding, unlabelled and crowd pixels),
        ``semantic`` int64 ``[h, w]`` (train id, C on void) and ``pixel_area`` float32
        ``[h, w]`` (see :func:`pixel_mask_area`), with h = ceil(H/stride); with a
        small-instance weight != 1 also ``semantic_weight`` float32 ``[h, w]``.

    Raises:
        ValueError: on missing keys, wrong dtypes or inconsistent shapes, or labels outside
            ``[0, C)``.
    """
    for key in ("masks", "labels", "is_crowd", "void"):
        _check(key in target, index, f"missing key {key!r} (have {sorted(target)})")
    masks, labels, is_crowd, void = (target[k] for k in ("masks", "labels", "is_crowd", "void"))
    _check(masks.dim() == 3, index, f"masks must be [M, H, W], got {tuple(masks.shape)}")
    _check(masks.dtype == torch.bool, index, f"masks must be bool, got {masks.dtype}")
    _check(void.dtype == torch.bool, index, f"void must be bool, got {void.dtype}")
    m, height, width = masks.shape
    _check(tuple(void.shape) == (height, width), index,
           f"void shape {tuple(void.shape)} != masks spatial shape {(height, width)}")
    _check(tuple(labels.shape) == (m,) and tuple(is_crowd.shape) == (m,), index,
           f"labels {tuple(labels.shape)} and is_crowd {tuple(is_crowd.shape)} must be [{m}]")
    if m:
        _check(int(labels.min()) >= 0 and int(labels.max()) < num_classes, index,
               f"labels must lie in [0, {num_classes}), got {labels.tolist()}")
    if stride < 1:
        raise ValueError(f"prepare_targets: stride must be >= 1, got {stride}")
    if not small_instance_weight > 0.0:
        raise ValueError(f"prepare_targets: small_instance_weight must be > 0, got {small_instance_weight}")
    weighted = small_instance_weight != 1.0 and small_instance_threshold > 0
    if weighted and thing_classes is None:
        raise ValueError("prepare_targets: small_instance_weight needs thing_classes")

    keep = ~is_crowd.bool()
    # [M, H, W] -> [M', h, w] by strided subsampling (BD: pan_seg_gt[::4, ::4]).
    small = masks[keep][:, ::stride, ::stride]
    small_labels = labels[keep].long()
    void_small = void[::stride, ::stride] | ~small.any(dim=0)
    small = small & ~void_small
    present = small.flatten(1).any(dim=1)
    small, small_labels = small[present], small_labels[present]

    semantic = torch.full(void_small.shape, num_classes, dtype=torch.int64, device=masks.device)
    for mask, label in zip(small, small_labels):
        semantic[mask] = label
    out = {
        "masks": small,
        "labels": small_labels,
        "void": void_small,
        "semantic": semantic,
        "pixel_area": pixel_mask_area(small),
    }
    if weighted:
        thing = torch.zeros(num_classes, dtype=torch.bool, device=masks.device)
        thing[list(thing_classes)] = True
        full = masks[keep]  # [M', H, W] non-crowd segments at full resolution
        area = full.flatten(1).sum(-1)  # [M'] pixels, deeplab2's instance_area
        small_thing = thing[labels[keep].long()] & (area < small_instance_threshold)  # [M']
        # segments do not overlap: pixel weight = weight on any small thing segment, else 1
        hit = (full & small_thing[:, None, None]).any(dim=0)[::stride, ::stride]  # [h, w]
        out["semantic_weight"] = torch.where(hit, torch.tensor(float(small_instance_weight)),
                                             torch.tensor(1.0)).to(torch.float32)
    return out


def prepare_targets(
    targets: Sequence[Dict[str, Tensor]],
    num_classes: int,
    stride: int = 4,
    device: Optional[torch.device] = None,
    **weighting,
) -> List[Dict[str, Tensor]]:
    """Stride-4 loss targets for a batch (spec §2; see :func:`prepare_image_targets`).

    Args:
        targets: per-image dataset targets (``masks``, ``labels``, ``is_crowd``, ``void``).
        num_classes: C.
        stride: subsampling step.
        device: if given, the returned tensors are moved there.
        weighting: ``small_instance_threshold``, ``small_instance_weight``,
            ``thing_classes`` (see :func:`prepare_image_targets`).

    Returns:
        One dict per image with ``masks``, ``labels``, ``void``, ``semantic`` and
        ``pixel_area`` (see :func:`prepare_image_targets`).
    """
    out = []
    for i, target in enumerate(targets):
        prepared = prepare_image_targets(target, num_classes, stride=stride, index=i, **weighting)
        if device is not None:
            prepared = {k: v.to(device, non_blocking=True) for k, v in prepared.items()}
        out.append(prepared)
    return out
