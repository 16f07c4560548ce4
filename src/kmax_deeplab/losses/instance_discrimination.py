"""Pixel-wise instance discrimination loss L_insdis (CMT-DeepLab, spec §2)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import fp32_region, gumbel_topk_sample, mean_over_nonzero, sampling_logits

__all__ = ["instance_discrimination_loss"]


def instance_discrimination_loss(
    pixel_feature: Tensor,
    target_masks: Tensor,
    void: Tensor,
    inverse_area: Tensor,
    *,
    sample_k: int = 4096,
    sample_temperature: float = 1.5,
    temperature: float = 0.3,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Contrastive loss between the pixel features of K Gumbel-sampled pixels.

    1. Sample K pixels per image without replacement with logits
       ``sample_temperature * log(h*w / area)`` and -99999 on void pixels.
    2. Target: the K×K same-mask indicator ``T = G^T G`` from the sampled target masks, each
       column divided by max(column sum, 1).
    3. Prediction: K×K dot products of the (L2-normalised) features divided by ``temperature``.
    4. Soft-target cross-entropy per column (softmax over the rows); each image's sum divided
       by its number of non-zero columns (sampled void pixels have an all-zero target column and
       drop out), averaged over the batch.

    Args:
        pixel_feature: ``[B, D, h, w]`` L2-normalised pixel features.
        target_masks: ``[B, N, h, w]`` float matched targets (any per-segment layout works:
            only ``G^T G`` is used).
        void: ``[B, h, w]`` bool void pixels.
        inverse_area: ``[B, h, w]`` float ``h*w / max(area of the pixel's mask, 1)``.
        sample_k: K (COCO 4096, ADE20K-641 1024); clipped to h*w.
        sample_temperature: tau_s (COCO/ADE20K 1.5, Cityscapes 0.6).
        temperature: similarity temperature (0.3).
        generator: optional RNG for the Gumbel noise.

    Returns:
        Scalar float32 loss.
    """
    with fp32_region(pixel_feature.device):
        features = pixel_feature.float().flatten(2)  # [B, D, hw]
        gt = target_masks.float().flatten(2)  # [B, N, hw]
        logits = sampling_logits(inverse_area.flatten(1), void.flatten(1), sample_temperature)
        idx = gumbel_topk_sample(logits, sample_k, generator)  # [B, K]
        # gather along hw: [B, N, hw] -> [B, N, K] and [B, D, hw] -> [B, D, K]
        gt_s = torch.gather(gt, 2, idx[:, None, :].expand(-1, gt.shape[1], -1))
        feat_s = torch.gather(features, 2, idx[:, None, :].expand(-1, features.shape[1], -1))
        # [B, N, K] x [B, N, K] -> [B, K, K] same-mask indicator
        target = torch.einsum("bnk,bnj->bkj", gt_s, gt_s)
        target = target / target.sum(dim=1, keepdim=True).clamp(min=1.0)
        # [B, D, K] x [B, D, K] -> [B, K, K] cosine similarities
        pred = torch.einsum("bdk,bdj->bkj", feat_s, feat_s) / temperature
        # class dim 1 (rows k), one loss per column j: [B, K]
        loss = F.cross_entropy(pred, target, reduction="none")
        return mean_over_nonzero(loss)
