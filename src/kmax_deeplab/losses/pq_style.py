"""PQ-style loss (MaX-DeepLab §3.2, spec §2): the class term and the mask dice term.

Both are weighted by the *other* factor of the matching similarity, detached: the class term
by the matched dice, the dice term by the matched class probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import fp32_region, mean_over_nonzero

__all__ = ["pq_class_loss", "pq_dice_loss"]


def pq_class_loss(pred_logits: Tensor, target_classes: Tensor, weight: Tensor, *, alpha: float = 0.75) -> Tensor:
    """PQ-style class term L_cls (spec §2).

    Per query: ``alpha_t * weight * CE(pred_logits, target)`` with ``alpha_t = alpha`` for a
    matched class and ``1 - alpha`` for the void target (a focal loss with gamma = 0). Each
    image's sum is divided by its number of non-zero terms, then averaged over the batch.

    Args:
        pred_logits: ``[B, N, C+1]`` class logits, void last.
        target_classes: ``[B, N]`` int64 matched train id, or C (void) for unmatched queries.
        weight: ``[B, N]`` float per-query weight (no gradient): ``max(D_matched, 1e-5)`` for
            matched queries, ``max(void ratio, 1e-5)`` for unmatched ones.
        alpha: weight of positive (non-void) targets.

    Returns:
        Scalar float32 loss.
    """
    with fp32_region(pred_logits.device):
        logits = pred_logits.float()
        void_index = logits.shape[-1] - 1
        # [B, N, C+1] -> [B, C+1, N] for cross_entropy's class dim 1.
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes.long(), reduction="none")  # [B, N]
        is_void = (target_classes == void_index).float()
        alpha_t = alpha * (1.0 - is_void) + (1.0 - alpha) * is_void
        return mean_over_nonzero(ce * alpha_t * weight.detach().float())


def pq_dice_loss(
    pred_masks: Tensor,
    target_masks: Tensor,
    void: Tensor,
    weight: Tensor,
    *,
    mask_void_pixels: bool = True,
    modifier: float = 0.75,
) -> Tensor:
    """PQ-style mask dice term L_dice (spec §2).

    ``p = softmax over queries`` (zeroed on void pixels), per query
    ``1 - (2<p, g> + 1) / (|p| + |g| + 1)``, times ``weight``; summed over queries,
    times ``modifier / N``, averaged over the batch.

    Args:
        pred_masks: ``[B, N, h, w]`` mask logits.
        target_masks: ``[B, N, h, w]`` float matched ground truth per query (zeros for
            unmatched queries).
        void: ``[B, h, w]`` bool void pixels.
        weight: ``[B, N]`` float (no gradient): ``max(S_matched, 1e-5)`` for matched
            queries, 0 for unmatched ones.
        mask_void_pixels: BD ``MASKING_VOID_PIXEL`` (default True).
        modifier: deeplab2 ``mask_dice_term_modifier`` (0.75, the class term's alpha).

    Returns:
        Scalar float32 loss.
    """
    with fp32_region(pred_masks.device):
        num_queries = pred_masks.shape[1]
        # [B, N, h, w] -> [B, N, hw], softmax over the N queries.
        probs = pred_masks.float().flatten(2).softmax(dim=1)
        if mask_void_pixels:
            probs = probs.masked_fill(void.flatten(1)[:, None, :], 0.0)
        gt = target_masks.float().flatten(2)
        numerator = 2.0 * (probs * gt).sum(-1) + 1.0  # [B, N]
        denominator = probs.sum(-1) + gt.sum(-1) + 1.0  # [B, N]
        loss = (1.0 - numerator / denominator) * weight.detach().float()
        return (loss.sum(dim=1) * modifier / num_queries).mean()
