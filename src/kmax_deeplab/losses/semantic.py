"""Auxiliary semantic segmentation loss L_sem (spec §1.5 and §2)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import fp32_region, gumbel_topk_sample, mean_over_nonzero, sampling_logits

__all__ = ["semantic_loss"]


def _subsample_to(x: Tensor, size: tuple) -> Tensor:
    """Strided subsampling of ``[B, h, w]`` to ``size`` with h-1 = stride·(h'-1) (BD)."""
    h, w = x.shape[-2:]
    hs, ws = size
    if (hs, ws) == (h, w):
        return x
    if hs < 2 or ws < 2 or (h - 1) % (hs - 1) or (w - 1) % (ws - 1) or (h - 1) // (hs - 1) != (w - 1) // (ws - 1):
        raise ValueError(
            f"semantic_loss: semantic_logits are {(hs, ws)}, which is no strided subsampling of the "
            f"{(h, w)} target (need h-1 = s*(h'-1) and w-1 = s*(w'-1) for one integer s)"
        )
    stride = (h - 1) // (hs - 1)
    return x[..., ::stride, ::stride]


def semantic_loss(
    semantic_logits: Tensor,
    semantic: Tensor,
    void: Tensor,
    inverse_area: Tensor,
    *,
    num_classes: int,
    sample_k: int = 4096,
    sample_temperature: float = 2.0,
    generator: Optional[torch.Generator] = None,
    weight: Optional[Tensor] = None,
) -> Tensor:
    """Cross-entropy of the auxiliary semantic head, ignore index C (BD).

    If the logits are coarser than the targets (Cityscapes: C channels at stride 32), the
    targets, void mask and area map are strided-subsampled to the logits' size, as BD does:
    stride ``(h-1)/(h'-1)``. With ``sample_k > 0`` K pixels per image are Gumbel-sampled
    (logits ``sample_temperature * log(h*w/area)``, -99999 on void; COCO/ADE20K K = 4096,
    tau = 2.0); with ``sample_k = 0`` every pixel is used (Cityscapes). Each image's sum is
    divided by its number of non-zero pixel losses, then averaged over the batch.

    Args:
        semantic_logits: ``[B, C+1, h, w]`` or ``[B, C, h', w']`` logits.
        semantic: ``[B, h, w]`` int64 train ids, C = ignore.
        void: ``[B, h, w]`` bool void pixels (used for sampling).
        inverse_area: ``[B, h, w]`` float ``h*w / max(area, 1)`` (used for sampling).
        num_classes: C (the ignore index).
        sample_k: K, or 0 for all pixels; clipped to the number of pixels.
        sample_temperature: tau for the sampling logits.
        generator: optional RNG for the Gumbel noise.
        weight: optional ``[B, h, w]`` float per-pixel weight (deeplab2's
            ``SEMANTIC_LOSS_WEIGHT_KEY``, e.g. the small-instance weight), multiplied into
            the pixel losses before the non-zero mean (deeplab2 ``TopKCrossEntropyLoss``).

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: if the logits' size is no strided subsampling of the target size, or the
            channel count is neither C nor C+1.
    """
    if semantic_logits.shape[1] not in (num_classes, num_classes + 1):
        raise ValueError(
            f"semantic_loss: semantic_logits have {semantic_logits.shape[1]} channels; expected "
            f"C={num_classes} or C+1={num_classes + 1}"
        )
    with fp32_region(semantic_logits.device):
        size = tuple(semantic_logits.shape[-2:])
        semantic = _subsample_to(semantic, size).flatten(1)  # [B, L]
        void = _subsample_to(void, size).flatten(1)
        inverse_area = _subsample_to(inverse_area, size).flatten(1)
        if weight is not None:
            weight = _subsample_to(weight, size).flatten(1).float()
        logits = semantic_logits.float().flatten(2)  # [B, C(+1), L]
        if sample_k > 0:
            idx = gumbel_topk_sample(sampling_logits(inverse_area, void, sample_temperature), sample_k, generator)
            semantic = torch.gather(semantic, 1, idx)  # [B, K]
            if weight is not None:
                weight = torch.gather(weight, 1, idx)
            logits = torch.gather(logits, 2, idx[:, None, :].expand(-1, logits.shape[1], -1))  # [B, C(+1), K]
        loss = F.cross_entropy(logits, semantic.long(), ignore_index=num_classes, reduction="none")  # [B, K]
        loss = loss * (semantic != num_classes).float()
        if weight is not None:
            loss = loss * weight
        return mean_over_nonzero(loss)
