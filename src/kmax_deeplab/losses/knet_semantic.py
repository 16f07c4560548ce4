"""The semantic K-Net's losses: mmseg pixel cross-entropy per stage and on the auxiliary head.

Source: mmseg 0.30 ``BaseDecodeHead.losses`` (logits bilinearly resized to the label size,
``align_corners`` of the head) and ``CrossEntropyLoss`` (``cross_entropy``: per-pixel CE with
``ignore_index``, ``reduction='mean'``; with ``avg_non_ignore=False``, the configs' default,
the sum is divided by ALL pixels of the batch, ignored ones included; with True by the
non-ignored ones); K-Net ``IterativeDecodeHead.losses`` (the kernel-generating head's loss
on the decode head's logits and on every stage's, keys ``loss_ce.s{i}``, weight 1 each);
mmseg ``EncoderDecoder._auxiliary_head_forward_train`` (``aux.loss_ce``, weight 0.4).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.losses.common import fp32_region

__all__ = ["KNetSemanticCriterion", "build_knet_semantic_criterion", "pixel_cross_entropy"]


def pixel_cross_entropy(logits: Tensor, labels: Tensor, *, ignore_label: int = 255, avg_non_ignore: bool = False,
                        align_corners: bool = False) -> Tensor:
    """mmseg's decode-head cross-entropy.

    Args:
        logits: ``[B, K, h, w]`` float; resized bilinearly to the labels' size first.
        labels: ``[B, H, W]`` int64 class ids, ``ignore_label`` excluded.
        avg_non_ignore: divide by the non-ignored pixels (True) or by all ``B*H*W`` (False).

    Returns:
        Scalar float32 (0 when every pixel is ignored).
    """
    with fp32_region(logits.device):
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear",
                                   align_corners=align_corners)
        loss = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_label, reduction="none")
        if avg_non_ignore:
            return loss.sum() / (labels != ignore_label).sum().clamp(min=1).to(loss.dtype)
        return loss.mean()


class KNetSemanticCriterion(nn.Module):
    """``loss_ce.s{i}`` (decode head = s0, stages s1..sS; ``stage_weight`` each) and
    ``aux.loss_ce`` (``aux_weight``), already weighted.

    ``outputs``: the training forward of
    :class:`~kmax_deeplab.modeling.knet_semantic.model.KNetSemantic` (``stage_logits``,
    ``aux_logits``); ``targets``: per-image dicts with ``sem_seg`` int64 ``[H, W]``
    (``ignore_label`` = void/padding), all of one size.
    """

    def __init__(self, *, stage_weight: float = 1.0, aux_weight: float = 0.4, ignore_label: int = 255,
                 avg_non_ignore: bool = False) -> None:
        super().__init__()
        self.stage_weight = float(stage_weight)
        self.aux_weight = float(aux_weight)
        self.ignore_label = int(ignore_label)
        self.avg_non_ignore = bool(avg_non_ignore)

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Loss terms ``{"loss_ce.s0", ..., "loss_ce.sS", "aux.loss_ce"}`` (scalars).

        Raises:
            KeyError: a target without ``sem_seg``.
        """
        labels = torch.stack([t["sem_seg"] for t in targets]).long()
        kw = dict(ignore_label=self.ignore_label, avg_non_ignore=self.avg_non_ignore)
        losses = {f"loss_ce.s{i}": self.stage_weight * pixel_cross_entropy(lg, labels, **kw)
                  for i, lg in enumerate(outputs["stage_logits"])}
        if outputs.get("aux_logits") is not None and self.aux_weight:
            losses["aux.loss_ce"] = self.aux_weight * pixel_cross_entropy(outputs["aux_logits"], labels, **kw)
        return losses


def build_knet_semantic_criterion(loss_cfg: Any) -> KNetSemanticCriterion:
    """:class:`KNetSemanticCriterion` of a ``loss`` section (``KNetSemanticLossConfig``)."""
    return KNetSemanticCriterion(stage_weight=loss_cfg.stage_weight, aux_weight=loss_cfg.aux_weight,
                                 ignore_label=loss_cfg.ignore_label, avg_non_ignore=loss_cfg.avg_non_ignore)
