"""Mask-ID cross-entropy L_maskCE (MaX-DeepLab auxiliary loss, spec §2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .common import fp32_region, mean_over_nonzero

__all__ = ["mask_id_cross_entropy"]


def mask_id_cross_entropy(pred_masks: Tensor, target_masks: Tensor, void: Tensor) -> Tensor:
    """Per-pixel softmax cross-entropy over the N queries against the matched ground truth.

    The target at a pixel is the one-hot of the query matched to the segment covering it,
    normalised to sum 1 where matched segments overlap. Void pixels are dropped; each image's
    sum is divided by its number of non-zero pixel losses (= its non-void pixels, BD), then
    averaged over the batch.

    Args:
        pred_masks: ``[B, N, h, w]`` mask logits.
        target_masks: ``[B, N, h, w]`` float matched targets, summing to 1 over N on
            non-void pixels.
        void: ``[B, h, w]`` bool void pixels.

    Returns:
        Scalar float32 loss.
    """
    with fp32_region(pred_masks.device):
        # [B, N, h, w] -> [B, N, hw]: class dim 1 = queries, one loss per pixel.
        ce = F.cross_entropy(pred_masks.float().flatten(2), target_masks.float().flatten(2), reduction="none")
        ce = ce.masked_fill(void.flatten(1), 0.0)  # [B, hw]
        return mean_over_nonzero(ce)
