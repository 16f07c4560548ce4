"""The MaX-DeepLab training criterion (spec ``max_deeplab.md`` §3; deeplab2
``model/loss/max_deeplab_loss.py`` with ``instance_discrimination_sample_k = 0`` and
``semantic_sample_k = 0``, the MaX-DeepLab defaults).

Total loss = ``3.0 (L_cls + L_dice) + 0.3 L_maskCE + 1.0 L_insdis + 1.0 L_sem`` on the single
final output (MaX has no per-layer auxiliary outputs). Matching, the PQ-style class and dice
terms, the mask-ID cross-entropy and the semantic CE are the shared terms kMaX uses
(deeplab2 computes both families with this one loss class); only the instance
discrimination differs:

* kMaX (CMT-DeepLab): contrast K Gumbel-sampled pixels with each other
  (:func:`kmax_deeplab.losses.instance_discrimination.instance_discrimination_loss`);
* MaX (here, :func:`max_instance_discrimination_loss`): for every ground-truth mask the
  L2-normalised mean pixel feature ``t_i``; every *thing* pixel classifies itself among all
  valid masks (thing and stuff) with logits ``g·t_i / τ`` (τ = 0.3).

Per-image normalisers (mean over non-zero terms, then the batch mean) as deeplab2; no
all-reduce is needed.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import fp32_region
from .criterion import build_matched_targets
from .mask_id import mask_id_cross_entropy
from .matching import HungarianMatcher
from .pq_style import pq_class_loss, pq_dice_loss
from .semantic import semantic_loss

__all__ = ["MAX_TERMS", "MAX_WEIGHTS", "MaXCriterion", "max_instance_discrimination_loss"]

#: The loss terms of MaX-DeepLab; a weight dict must have exactly these keys.
MAX_TERMS = ("loss_cls", "loss_dice", "loss_mask_id", "loss_insdis", "loss_sem")
#: deeplab2's MaX-DeepLab COCO weights (configs/coco/max_deeplab/*.textproto): PQ-style 3.0
#: on both of its terms, mask-ID CE 0.3, instance discrimination 1.0, semantic 1.0.
MAX_WEIGHTS = {"loss_cls": 3.0, "loss_dice": 3.0, "loss_mask_id": 0.3, "loss_insdis": 1.0, "loss_sem": 1.0}


def max_instance_discrimination_loss(pixel_feature: Tensor, gt_masks: Sequence[Tensor], is_thing: Sequence[Tensor],
                                     *, temperature: float = 0.3) -> Tensor:
    """MaX-DeepLab's instance discrimination (deeplab2 ``_call_original_instance_discrimination_loss``).

    Per image: ``t_i = normalize(Σ_p g_p m_ip / max(|m_i|, 1))`` for every ground-truth mask
    i; each pixel p of a *thing* mask gets the cross-entropy of ``softmax_i(g_p·t_i / τ)``
    towards its own mask; the image's sum is divided by its number of non-zero pixel
    losses (0 when it has no thing pixel); the batch mean is returned.

    Args:
        pixel_feature: ``[B, D, h, w]`` L2-normalised pixel features g.
        gt_masks: B bool ``[M_b, h, w]`` non-overlapping ground-truth masks (non-crowd
            things and stuff, empty masks allowed: they are excluded like deeplab2's void rows).
        is_thing: B bool ``[M_b]``, which masks are things.
        temperature: τ.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: mismatched batch or mask sizes.
    """
    if len(gt_masks) != pixel_feature.shape[0] or len(is_thing) != pixel_feature.shape[0]:
        raise ValueError(f"max_instance_discrimination_loss: {len(gt_masks)} mask sets / {len(is_thing)} "
                         f"thing flags for a batch of {pixel_feature.shape[0]}")
    with fp32_region(pixel_feature.device):
        losses = []
        for b, (masks, thing) in enumerate(zip(gt_masks, is_thing)):
            if tuple(masks.shape[-2:]) != tuple(pixel_feature.shape[-2:]):
                raise ValueError(f"max_instance_discrimination_loss: masks of image {b} are "
                                 f"{tuple(masks.shape[-2:])}, features {tuple(pixel_feature.shape[-2:])}")
            g = pixel_feature[b].float().flatten(1)  # [D, hw]
            m = masks.float().flatten(1)  # [M, hw]
            area = m.sum(-1)  # [M]
            valid = area > 0.5
            weight = (m * thing.float()[:, None]).sum(0)  # [hw] 1 on thing pixels
            if not bool(valid.any()) or not bool((weight > 0).any()):
                losses.append(pixel_feature.new_zeros((), dtype=torch.float32) * g.sum())
                continue
            # [M, hw] x [hw, D] -> [M, D] mean feature per mask, then unit L2 norm
            centers = F.normalize((m @ g.t()) / area.clamp(min=1.0)[:, None], dim=-1)
            logits = (centers @ g) / temperature  # [M, hw]
            logits = logits.masked_fill(~valid[:, None], -99999.0)
            # soft target = the pixel's one-hot mask column; class dim 0 -> [hw]
            ce = -(m * F.log_softmax(logits, dim=0)).sum(0)
            weighted = ce * weight
            count = (weighted != 0).sum()
            losses.append(weighted.sum() / count.clamp(min=1))
        return torch.stack(losses).mean()


class MaXCriterion(nn.Module):
    """MaX-DeepLab loss: PQ-style (class + dice), mask-ID CE, MaX instance discrimination, semantic.

    Args:
        num_classes: C (void is index C).
        thing_classes: train ids of the thing classes (COCO: 0..79).
        matcher: a :class:`HungarianMatcher` (cost −dice·class probability, the shared one).
        weight_dict: weight per term, keys exactly :data:`MAX_TERMS`; 0 disables a term.
        focal_alpha: α of the class term (0.75).
        insdis_temperature: τ of the instance discrimination (0.3).
        mask_void_pixels: zero the slot softmax on void pixels in the dice term (deeplab2: yes).
        weight_floor: lower bound of the PQ-style weights (1e-5).

    Raises:
        ValueError: weight keys not exactly :data:`MAX_TERMS`, or a negative weight.
    """

    def __init__(self, num_classes: int, thing_classes: Sequence[int], matcher: Optional[HungarianMatcher] = None,
                 weight_dict: Mapping[str, float] = MAX_WEIGHTS, *, focal_alpha: float = 0.75,
                 insdis_temperature: float = 0.3, mask_void_pixels: bool = True, weight_floor: float = 1e-5) -> None:
        super().__init__()
        unknown, missing = sorted(set(weight_dict) - set(MAX_TERMS)), sorted(set(MAX_TERMS) - set(weight_dict))
        if unknown or missing:
            raise ValueError(f"MaXCriterion: weight_dict keys must be exactly {list(MAX_TERMS)}; "
                             f"unknown keys {unknown}, terms without a weight {missing}")
        negative = {k: v for k, v in weight_dict.items() if not float(v) >= 0.0}
        if negative:
            raise ValueError(f"MaXCriterion: weights must be >= 0, got {negative}")
        self.num_classes = int(num_classes)
        thing = torch.zeros(self.num_classes, dtype=torch.bool)
        thing[list(thing_classes)] = True
        self.register_buffer("thing_classes", thing, persistent=False)
        self.matcher = matcher if matcher is not None else HungarianMatcher(mask_void_pixels=mask_void_pixels)
        self.weight_dict = {k: float(weight_dict[k]) for k in MAX_TERMS}
        self.focal_alpha = focal_alpha
        self.insdis_temperature = insdis_temperature
        self.mask_void_pixels = mask_void_pixels
        self.weight_floor = weight_floor

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, weights={self.weight_dict}, focal_alpha={self.focal_alpha}, "
                f"insdis(tau={self.insdis_temperature}, original MaX), semantic(all pixels)")

    def forward(self, outputs: Mapping, targets: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Compute the weighted loss terms.

        Args:
            outputs: ``pred_logits [B, N, C+1]``, ``pred_masks [B, N, h, w]``,
                ``pixel_feature [B, D, h, w]`` and (when ``loss_sem`` > 0) ``semantic_logits
                [B, C+1, h, w]``.
            targets: B stride-4 targets (:func:`kmax_deeplab.data.targets.prepare_targets`):
                ``masks`` bool ``[M, h, w]``, ``labels`` int64 ``[M]``, ``void`` bool
                ``[h, w]``, ``semantic`` int64 ``[h, w]``, optionally ``semantic_weight``
                float32 ``[h, w]`` (the small-instance weight, deeplab2's semantic loss weights).

        Returns:
            Scalar float32 tensors, already weighted: ``loss_cls``, ``loss_dice``,
            ``loss_mask_id``, ``loss_insdis``, ``loss_sem`` (terms with weight 0 omitted).

        Raises:
            ValueError: malformed targets or a missing ``semantic_logits``.
        """
        bsz, _, height, width = outputs["pred_masks"].shape
        if len(targets) != bsz:
            raise ValueError(f"MaXCriterion: {len(targets)} targets for a batch of {bsz}")
        for i, t in enumerate(targets):
            miss = [k for k in ("masks", "labels", "void", "semantic") if k not in t]
            if miss:
                raise ValueError(f"MaXCriterion: target {i} lacks {miss}; pass prepare_targets' output")
            if tuple(t["void"].shape) != (height, width):
                raise ValueError(f"MaXCriterion: target {i} is {tuple(t['void'].shape)} but pred_masks are "
                                 f"{(height, width)}")
        w = self.weight_dict
        with fp32_region(outputs["pred_masks"].device):
            out = {k: outputs[k].float() for k in ("pred_logits", "pred_masks", "pixel_feature")}
            matches = self.matcher(out, targets)
            mt = build_matched_targets(out, targets, matches, self.num_classes, weight_floor=self.weight_floor)
            losses: Dict[str, Tensor] = {}
            if w["loss_cls"] > 0:
                losses["loss_cls"] = pq_class_loss(out["pred_logits"], mt.classes, mt.class_weight,
                                                   alpha=self.focal_alpha)
            if w["loss_dice"] > 0:
                losses["loss_dice"] = pq_dice_loss(out["pred_masks"], mt.masks, mt.void, mt.dice_weight,
                                                   mask_void_pixels=self.mask_void_pixels, modifier=self.focal_alpha)
            if w["loss_mask_id"] > 0:
                losses["loss_mask_id"] = mask_id_cross_entropy(out["pred_masks"], mt.masks, mt.void)
            if w["loss_insdis"] > 0:
                thing = self.thing_classes.to(out["pixel_feature"].device)
                losses["loss_insdis"] = max_instance_discrimination_loss(
                    out["pixel_feature"], [t["masks"] for t in targets],
                    [thing[t["labels"].long()] for t in targets], temperature=self.insdis_temperature)
            if w["loss_sem"] > 0:
                if outputs.get("semantic_logits") is None:
                    raise ValueError("MaXCriterion: loss_sem has a weight but outputs has no 'semantic_logits' "
                                     "(is the model in training mode?)")
                weight = None
                if all("semantic_weight" in t for t in targets):  # deeplab2's small-instance weight
                    weight = torch.stack([t["semantic_weight"] for t in targets]).to(mt.semantic.device)
                losses["loss_sem"] = semantic_loss(outputs["semantic_logits"].float(), mt.semantic, mt.void,
                                                   mt.inverse_area, num_classes=self.num_classes, sample_k=0,
                                                   weight=weight)
        return {name: value * w[name] for name, value in losses.items()}
