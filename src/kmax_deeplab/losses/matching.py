"""Hungarian matching of kMaX queries to ground-truth segments (spec §2 "Matching").

The cost is the negated *product* of a dice similarity on the query-softmaxed masks and the
matched-class probability (MaX-DeepLab's PQ-style similarity). It is computed per image under
``no_grad`` in fp32 with autocast disabled, and solved with scipy's ``linear_sum_assignment``.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .common import fp32_region

__all__ = ["ImageMatch", "HungarianMatcher", "mask_similarity", "class_similarity", "linear_assignment"]

#: Epsilon in the dice similarity denominator (deeplab2 ``denominator_epsilon``).
DICE_EPSILON = 1e-5


def linear_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of a ``[N, M]`` cost matrix (scipy Hungarian).

    NaN/inf costs become 0 first. With N >= M every column is matched; otherwise the best N.

    Returns:
        ``(rows, cols)`` int64 on ``cost.device``, ``rows`` ascending (scipy's order).
    """
    cost = torch.nan_to_num(cost.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    if cost.numel() == 0:
        rows = cols = np.zeros((0,), dtype=np.int64)
    else:
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.int64, device=cost.device),
            torch.as_tensor(cols, dtype=torch.int64, device=cost.device))


class ImageMatch(NamedTuple):
    """Matching result for one image.

    Attributes:
        pred_idx: ``[K]`` int64 indices of the matched queries, K = min(N, M).
        gt_idx: ``[K]`` int64 indices of their ground-truth segments.
        dice: ``[K]`` float32 dice similarity D(pred_idx, gt_idx) (no gradient).
        class_prob: ``[K]`` float32 class similarity S(pred_idx, gt_idx) (no gradient).
    """

    pred_idx: Tensor
    gt_idx: Tensor
    dice: Tensor
    class_prob: Tensor


@torch.no_grad()
def mask_similarity(mask_logits: Tensor, gt_masks: Tensor, void: Tensor, *, mask_void_pixels: bool = True) -> Tensor:
    """Dice similarity D(i, j) = <p_i, g_j> / ((|p_i| + |g_j|)/2 + 1e-5) (spec §2).

    Args:
        mask_logits: ``[N, h, w]`` mask logits of one image.
        gt_masks: ``[M, h, w]`` bool or float ground-truth masks.
        void: ``[h, w]`` bool void pixels; ``p`` is zeroed there when ``mask_void_pixels``.
        mask_void_pixels: BD ``MASKING_VOID_PIXEL`` (default True).

    Returns:
        ``[N, M]`` float32 similarities.
    """
    with fp32_region(mask_logits.device):
        # [N, h, w] -> [N, hw], softmax over the N queries (dim 0).
        probs = mask_logits.float().flatten(1).softmax(dim=0)
        if mask_void_pixels:
            probs = probs * (~void.flatten()).float()[None, :]
        gt = gt_masks.float().flatten(1)  # [M, hw]
        intersection = probs @ gt.t()  # [N, hw] x [hw, M] -> [N, M]
        denominator = (probs.sum(-1)[:, None] + gt.sum(-1)[None, :]) / 2.0
        return intersection / (denominator + DICE_EPSILON)


@torch.no_grad()
def class_similarity(class_logits: Tensor, gt_labels: Tensor) -> Tensor:
    """Class similarity S(i, j) = softmax(class logits)[i, c_j] (spec §2).

    The void logit (last channel) is part of the softmax normaliser but never a target.

    Args:
        class_logits: ``[N, C+1]`` class logits of one image, void last.
        gt_labels: ``[M]`` int64 train ids in ``[0, C)``.

    Returns:
        ``[N, M]`` float32 probabilities.
    """
    with fp32_region(class_logits.device):
        probs = class_logits.float().softmax(dim=-1)[:, :-1]  # drop void after normalising
        return probs[:, gt_labels.long()]


class HungarianMatcher(nn.Module):
    """One-to-one matching maximising sum D(i, j)·S(i, j) per image (spec §2).

    Cost = -D·S; ``nan_to_num`` is applied before scipy. With N >= M (the practical case) every
    segment is matched. With M > N only N segments are matched (scipy truncates the rectangular
    problem to the best N); the criterion then treats the unmatched segments' pixels as void,
    as BD does.

    Args:
        mask_void_pixels: zero the query probabilities on void pixels before the dice
            similarity (BD ``MASKING_VOID_PIXEL``, default True).
    """

    def __init__(self, *, mask_void_pixels: bool = True) -> None:
        super().__init__()
        self.mask_void_pixels = mask_void_pixels

    @torch.no_grad()
    def forward(self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]) -> List[ImageMatch]:
        """Match each image's queries to its segments.

        Args:
            outputs: dict with ``pred_logits`` ``[B, N, C+1]`` and ``pred_masks``
                ``[B, N, h, w]`` (extra keys are ignored).
            targets: B stride-4 targets (:func:`kmax_deeplab.data.targets.prepare_targets`),
                each with ``masks`` bool ``[M, h, w]``, ``labels`` int64 ``[M]`` and ``void``
                bool ``[h, w]``.

        Returns:
            One :class:`ImageMatch` per image, with ``pred_idx`` sorted ascending.

        Raises:
            ValueError: if the batch sizes or the mask sizes of outputs and targets differ.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {pred_logits.shape[0]}")
        matches = []
        for b, target in enumerate(targets):
            gt_masks, gt_labels, void = target["masks"], target["labels"], target["void"]
            if tuple(gt_masks.shape[-2:]) != tuple(pred_masks.shape[-2:]):
                raise ValueError(
                    f"HungarianMatcher: target {b} masks are {tuple(gt_masks.shape[-2:])} but pred_masks "
                    f"are {tuple(pred_masks.shape[-2:])}; run prepare_targets with the model's stride"
                )
            dice = mask_similarity(pred_masks[b], gt_masks, void, mask_void_pixels=self.mask_void_pixels)
            cls = class_similarity(pred_logits[b], gt_labels)
            cost = torch.nan_to_num(-dice * cls, nan=0.0, posinf=0.0, neginf=0.0)
            if cost.numel() == 0:
                rows = cols = np.zeros((0,), dtype=np.int64)
            else:
                rows, cols = linear_sum_assignment(cost.cpu().numpy())
            device = pred_logits.device
            pred_idx = torch.as_tensor(rows, dtype=torch.int64, device=device)
            gt_idx = torch.as_tensor(cols, dtype=torch.int64, device=device)
            matches.append(ImageMatch(pred_idx, gt_idx, dice[pred_idx, gt_idx], cls[pred_idx, gt_idx]))
        return matches

    def extra_repr(self) -> str:
        return f"cost=-dice*class_prob, mask_void_pixels={self.mask_void_pixels}"
