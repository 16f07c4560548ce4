"""The kMaX-DeepLab training criterion (spec §2, §7.7-7.8).

Total loss = sum over the final output and each aux output of
``3 L_cls + 3 L_dice + 0.3 L_maskCE + 1 L_insdis``, plus ``1 L_sem`` on the final output only.
The final output is matched once and, by default, the matching (and the per-query weights
derived from the final output) is shared with all aux outputs (BD ``SHARE_FINAL_MATCHING``).
Everything runs in fp32 with autocast disabled.

The generic part is :class:`SetCriterion`: loss terms looked up by name in a table
(Mask2Former's ``get_loss``), a separate matching step (:class:`MatchOnce` per model as kMaX,
:class:`MatchEachOutput` per output / stage as K-Net), weights checked at construction.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ..data.targets import pixel_mask_area
from .common import fp32_region
from .instance_discrimination import instance_discrimination_loss
from .mask_id import mask_id_cross_entropy
from .matching import HungarianMatcher, ImageMatch
from .pq_style import pq_class_loss, pq_dice_loss
from .semantic import semantic_loss

__all__ = ["KMAX_FINAL_TERMS", "KMAX_TERMS", "MATCHING_STEPS", "TERMS", "KMaXCriterion", "MatchEachOutput",
           "MatchOnce", "MatchedTargets", "SetCriterion", "build_criterion", "build_matched_targets"]

#: Names of the loss terms; the weight dict must have exactly these keys.
TERMS = ("loss_cls", "loss_dice", "loss_mask_id", "loss_insdis", "loss_sem")
_PER_OUTPUT_TERMS = ("loss_cls", "loss_dice", "loss_mask_id", "loss_insdis")
_OUTPUT_KEYS = ("pred_logits", "pred_masks", "pixel_feature")


class MatchedTargets(NamedTuple):
    """Ground truth laid out per query after matching (BD ``process_gt``); no gradients.

    Attributes:
        masks: ``[B, N, h, w]`` float matched GT mask per query (zeros if unmatched), divided by
            max(number of matched masks covering the pixel, 1).
        classes: ``[B, N]`` int64 matched train id, C (void) for unmatched queries.
        void: ``[B, h, w]`` bool pixels covered by no matched mask (padding, crowd, unlabelled;
            with M > N also the unmatched segments).
        class_weight: ``[B, N]`` float L_cls weight: matched max(D, eps); unmatched
            max(void ratio, eps) with void ratio = sum(p·void) / (sum(p) + 1e-5), p the
            (unmasked) query softmax of the output the targets were built from.
        dice_weight: ``[B, N]`` float L_dice weight: matched max(S, eps), unmatched 0.
        inverse_area: ``[B, h, w]`` float h·w / max(area of the pixel's matched mask, 1).
        semantic: ``[B, h, w]`` int64 semantic target, C = ignore.
    """

    masks: Tensor
    classes: Tensor
    void: Tensor
    class_weight: Tensor
    dice_weight: Tensor
    inverse_area: Tensor
    semantic: Tensor


@torch.no_grad()
def build_matched_targets(
    outputs: Mapping[str, Tensor],
    targets: Sequence[Dict[str, Tensor]],
    matches: Sequence[ImageMatch],
    num_classes: int,
    *,
    weight_floor: float = 1e-5,
) -> MatchedTargets:
    """Scatter the matched ground truth to the N query slots (spec §2).

    Args:
        outputs: dict with ``pred_masks`` ``[B, N, h, w]`` (used for the unmatched queries'
            void ratio).
        targets: B stride-4 targets with ``masks`` bool ``[M, h, w]``, ``labels`` ``[M]`` and
            ``semantic`` ``[h, w]``.
        matches: one :class:`ImageMatch` per image.
        num_classes: C.
        weight_floor: lower bound of the matched weights (BD ``NO_OBJECT_WEIGHT`` = 1e-5).

    Returns:
        :class:`MatchedTargets`.
    """
    with fp32_region(outputs["pred_masks"].device):
        pred_masks = outputs["pred_masks"].detach().float()
        bsz, num_queries, height, width = pred_masks.shape
        device = pred_masks.device
        masks = torch.zeros_like(pred_masks)
        classes = torch.full((bsz, num_queries), num_classes, dtype=torch.int64, device=device)
        dice_weight = torch.zeros((bsz, num_queries), dtype=torch.float32, device=device)
        matched_dice = torch.zeros((bsz, num_queries), dtype=torch.float32, device=device)
        is_matched = torch.zeros((bsz, num_queries), dtype=torch.bool, device=device)
        for b, (target, match) in enumerate(zip(targets, matches)):
            masks[b, match.pred_idx] = target["masks"][match.gt_idx].to(device).float()
            classes[b, match.pred_idx] = target["labels"][match.gt_idx].to(device).long()
            dice_weight[b, match.pred_idx] = match.class_prob.float().clamp(min=weight_floor)
            matched_dice[b, match.pred_idx] = match.dice.float()
            is_matched[b, match.pred_idx] = True
        masks = masks / masks.sum(dim=1, keepdim=True).clamp(min=1.0)
        void = masks.sum(dim=1) < 0.5  # [B, h, w]; the normalised sum is 0 or 1
        inverse_area = (height * width) / pixel_mask_area(masks).clamp(min=1.0)

        # Void ratio of every query: [B, N, hw] x [B, hw] -> [B, N]
        probs = pred_masks.flatten(2).softmax(dim=1)
        void_ratio = torch.einsum("bnl,bl->bn", probs, void.flatten(1).float()) / (probs.sum(-1) + 1e-5)
        class_weight = torch.where(is_matched, matched_dice, void_ratio).clamp(min=weight_floor)
        semantic = torch.stack([t["semantic"].to(device).long() for t in targets])
    return MatchedTargets(masks, classes, void, class_weight, dice_weight, inverse_area, semantic)


# ---------------------------------------------------------------------- matching steps
class MatchOnce:
    """Match the final output once and share it with every aux output (kMaX, BD ``SHARE_FINAL_MATCHING``).

    ``__call__(assign, final, auxes, targets)`` returns one matched-target object per output
    (final first), where ``assign(output, targets)`` matches one output and lays the ground
    truth out per query.
    """

    name = "once"

    def __call__(self, assign, final, auxes, targets):
        matched = assign(final, targets)
        return [matched] + [matched] * len(auxes)


class MatchEachOutput:
    """Re-match every output on its own (deeplab2-style per-layer matching; K-Net per stage)."""

    name = "each_output"

    def __call__(self, assign, final, auxes, targets):
        return [assign(final, targets)] + [assign(aux, targets) for aux in auxes]


#: ``criterion.matching`` by name.
MATCHING_STEPS = {"once": MatchOnce, "each_output": MatchEachOutput}


# ---------------------------------------------------------------------- the generic criterion
class SetCriterion(nn.Module):
    """A set-prediction criterion: a swappable matching step and loss terms looked up by name.

    As Mask2Former's ``SetCriterion.get_loss``, each term is a function in a table,
    ``term(criterion, output, matched, generator) -> scalar``; adding a family's loss is one
    entry. Unlike it, the weights are checked at construction: every weight names a term and
    every term has a weight (no silent drop).

    Args:
        terms: name -> term function, applied to the final output and to every aux output
            (aux results keyed ``{name}_aux{i}``).
        final_terms: name -> term function applied to the final output only (it receives the
            whole model output, e.g. ``semantic_logits``).
        weight_dict: weight per name of ``terms`` and ``final_terms``, exactly; 0 disables a
            term (neither computed nor returned).
        assign: ``(output, targets) -> matched`` (matching plus per-query ground truth).
        matching: a matching step (:class:`MatchOnce`, :class:`MatchEachOutput`).
        output_keys: keys of each output cast to fp32 before the terms run.

    Raises:
        ValueError: a weight key names no term, a term has no weight, or a weight is < 0.
    """

    def __init__(self, terms: Mapping[str, Callable], final_terms: Mapping[str, Callable],
                 weight_dict: Mapping[str, float], *, assign: Callable, matching: Callable,
                 output_keys: Sequence[str] = _OUTPUT_KEYS) -> None:
        super().__init__()
        names = list(terms) + list(final_terms)
        unknown = sorted(set(weight_dict) - set(names))
        missing = sorted(set(names) - set(weight_dict))
        if unknown or missing:
            raise ValueError(
                f"{type(self).__name__}: weight_dict keys must be exactly {names}; "
                f"unknown keys {unknown}, terms without a weight {missing}"
            )
        negative = {k: v for k, v in weight_dict.items() if not float(v) >= 0.0}
        if negative:
            raise ValueError(f"{type(self).__name__}: weights must be >= 0, got {negative}")
        self.terms = dict(terms)
        self.final_terms = dict(final_terms)
        self.weight_dict = {k: float(weight_dict[k]) for k in names}
        self.assign = assign
        self.matching = matching
        self.output_keys = tuple(output_keys)

    def get_loss(self, name: str, output: Mapping, matched, generator=None) -> Tensor:
        """The unweighted term ``name`` of one output (the ``loss_map`` dispatch)."""
        fn = self.terms.get(name) or self.final_terms[name]
        return fn(self, output, matched, generator)

    def check_targets(self, outputs: Mapping, targets: Sequence[Dict[str, Tensor]]) -> None:
        """Hook: raise ``ValueError`` for targets that do not fit the outputs."""

    def forward(self, outputs: Mapping, targets: Sequence[Dict[str, Tensor]], *,
                generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Weighted loss terms of the final output (``name``) and aux outputs (``name_aux{i}``).

        Everything runs in fp32 with autocast off. There is no total key: the total loss is
        the sum of the values.
        """
        self.check_targets(outputs, targets)
        device = outputs["pred_masks"].device
        w = self.weight_dict
        with fp32_region(device):
            final = {k: outputs[k].float() for k in self.output_keys if k in outputs}
            auxes = [{k: aux[k].float() for k in self.output_keys if k in aux}
                     for aux in (outputs.get("aux_outputs") or [])]
            matched = self.matching(self.assign, final, auxes, targets)
            losses = {n: self.get_loss(n, final, matched[0], generator) for n in self.terms if w[n] > 0}
            for n in self.final_terms:
                if w[n] > 0:
                    losses[n] = self.get_loss(n, outputs, matched[0], generator)
            for i, (aux, aux_matched) in enumerate(zip(auxes, matched[1:])):
                for n in self.terms:
                    if w[n] > 0:
                        losses[f"{n}_aux{i}"] = self.get_loss(n, aux, aux_matched, generator)
        return {name: value * w[name.split("_aux")[0]] for name, value in losses.items()}


# ---------------------------------------------------------------------- kMaX's terms
def _term_cls(crit, out, mt: MatchedTargets, generator) -> Tensor:
    return pq_class_loss(out["pred_logits"], mt.classes, mt.class_weight, alpha=crit.focal_alpha)


def _term_dice(crit, out, mt: MatchedTargets, generator) -> Tensor:
    return pq_dice_loss(out["pred_masks"], mt.masks, mt.void, mt.dice_weight, mask_void_pixels=crit.mask_void_pixels)


def _term_mask_id(crit, out, mt: MatchedTargets, generator) -> Tensor:
    return mask_id_cross_entropy(out["pred_masks"], mt.masks, mt.void)


def _term_insdis(crit, out, mt: MatchedTargets, generator) -> Tensor:
    return instance_discrimination_loss(
        out["pixel_feature"], mt.masks, mt.void, mt.inverse_area,
        sample_k=crit.insdis_sample_k, sample_temperature=crit.insdis_sample_temperature,
        temperature=crit.insdis_temperature, generator=generator,
    )


def _term_sem(crit, outputs, mt: MatchedTargets, generator) -> Tensor:
    if outputs.get("semantic_logits") is None:
        raise ValueError("KMaXCriterion: loss_sem has a weight but outputs has no 'semantic_logits' "
                         "(is the model in training mode?)")
    return semantic_loss(
        outputs["semantic_logits"].float(), mt.semantic, mt.void, mt.inverse_area,
        num_classes=crit.num_classes, sample_k=crit.semantic_sample_k,
        sample_temperature=crit.semantic_sample_temperature, generator=generator,
    )


#: kMaX's per-output terms (final and every aux output), in computation order (spec §2).
KMAX_TERMS: Dict[str, Callable] = {
    "loss_cls": _term_cls,
    "loss_dice": _term_dice,
    "loss_mask_id": _term_mask_id,
    "loss_insdis": _term_insdis,
}
#: kMaX's final-output-only terms.
KMAX_FINAL_TERMS: Dict[str, Callable] = {"loss_sem": _term_sem}


class KMaXCriterion(SetCriterion):
    """kMaX-DeepLab loss: PQ-style, mask-ID CE, instance discrimination, semantic (spec §2).

    A :class:`SetCriterion` with the terms :data:`KMAX_TERMS` + :data:`KMAX_FINAL_TERMS` and
    the matched targets of :func:`build_matched_targets`.

    Args:
        num_classes: C (void is index C).
        matcher: a :class:`HungarianMatcher` (or any callable with its signature).
        weight_dict: weight per term, keys exactly :data:`TERMS`
            (``loss_cls, loss_dice, loss_mask_id, loss_insdis, loss_sem``); the same weight
            applies to the final and the aux outputs. A weight of 0 disables the term (it is
            neither computed nor returned).
        focal_alpha: alpha of L_cls (0.75).
        insdis_temperature: similarity temperature of L_insdis (0.3).
        insdis_sample_k: K of L_insdis (COCO 4096).
        insdis_sample_temperature: tau_s of L_insdis (COCO 1.5, Cityscapes 0.6).
        semantic_sample_k: K of L_sem (COCO 4096; 0 = all pixels, Cityscapes).
        semantic_sample_temperature: tau of L_sem (2.0).
        share_final_matching: reuse the final output's matching and matched targets for the aux
            outputs (BD default True, :class:`MatchOnce`); False re-matches each aux output
            (:class:`MatchEachOutput`).
        mask_void_pixels: zero the query softmax on void pixels in L_dice (BD default True).
        weight_floor: lower bound of the PQ-style weights (1e-5).

    Raises:
        ValueError: if a weight key names no term, a term has no weight, or a weight is < 0.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Mapping[str, float],
        *,
        focal_alpha: float = 0.75,
        insdis_temperature: float = 0.3,
        insdis_sample_k: int = 4096,
        insdis_sample_temperature: float = 1.5,
        semantic_sample_k: int = 4096,
        semantic_sample_temperature: float = 2.0,
        share_final_matching: bool = True,
        mask_void_pixels: bool = True,
        weight_floor: float = 1e-5,
    ) -> None:
        super().__init__(KMAX_TERMS, KMAX_FINAL_TERMS, weight_dict, assign=self._assign,
                         matching=MatchOnce() if share_final_matching else MatchEachOutput())
        self.num_classes = num_classes
        self.matcher = matcher
        self.focal_alpha = focal_alpha
        self.insdis_temperature = insdis_temperature
        self.insdis_sample_k = insdis_sample_k
        self.insdis_sample_temperature = insdis_sample_temperature
        self.semantic_sample_k = semantic_sample_k
        self.semantic_sample_temperature = semantic_sample_temperature
        self.share_final_matching = share_final_matching
        self.mask_void_pixels = mask_void_pixels
        self.weight_floor = weight_floor

    def _assign(self, output: Mapping[str, Tensor], targets: Sequence[Dict[str, Tensor]]) -> MatchedTargets:
        matches = self.matcher(output, targets)
        return build_matched_targets(output, targets, matches, self.num_classes, weight_floor=self.weight_floor)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, weights={self.weight_dict}, focal_alpha={self.focal_alpha}, "
            f"insdis(k={self.insdis_sample_k}, tau_s={self.insdis_sample_temperature}, "
            f"tau={self.insdis_temperature}), semantic(k={self.semantic_sample_k}, "
            f"tau={self.semantic_sample_temperature}), share_final_matching={self.share_final_matching}, "
            f"mask_void_pixels={self.mask_void_pixels}"
        )

    def check_targets(self, outputs: Mapping[str, Tensor], targets: Sequence[Dict[str, Tensor]]) -> None:
        bsz, _, height, width = outputs["pred_masks"].shape
        if len(targets) != bsz:
            raise ValueError(f"KMaXCriterion: {len(targets)} targets for a batch of {bsz}")
        for i, t in enumerate(targets):
            missing = [k for k in ("masks", "labels", "void", "semantic") if k not in t]
            if missing:
                raise ValueError(
                    f"KMaXCriterion: target {i} lacks {missing}; pass the output of "
                    "kmax_deeplab.data.targets.prepare_targets"
                )
            if tuple(t["void"].shape) != (height, width) or tuple(t["masks"].shape[-2:]) != (height, width):
                raise ValueError(
                    f"KMaXCriterion: target {i} is {tuple(t['void'].shape)} but pred_masks are "
                    f"{(height, width)}; prepare_targets must use the model's output stride"
                )

    _check_targets = check_targets  # old name

    def forward(
        self,
        outputs: Mapping,
        targets: Sequence[Dict[str, Tensor]],
        *,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, Tensor]:
        """Compute the weighted loss terms.

        Args:
            outputs: a ``MaskTransformerOutput``: ``pred_logits`` ``[B, N, C+1]``,
                ``pred_masks`` ``[B, N, h, w]``, ``pixel_feature`` ``[B, D, h, w]``,
                ``aux_outputs`` (list of dicts with those keys) and ``semantic_logits``
                (required when the ``loss_sem`` weight is > 0).
            targets: B stride-4 targets from :func:`kmax_deeplab.data.targets.prepare_targets`
                (``masks`` bool ``[M, h, w]``, ``labels`` int64 ``[M]``, ``void`` bool
                ``[h, w]``, ``semantic`` int64 ``[h, w]``), on the outputs' device.
            generator: optional RNG for the Gumbel samplers.

        Returns:
            Scalar float32 tensors, **already multiplied by their weight**, keyed
            ``loss_cls, loss_dice, loss_mask_id, loss_insdis, loss_sem`` for the final output
            and ``loss_cls_aux{i}`` ... ``loss_insdis_aux{i}`` for aux output i (0-based,
            decoder-layer order). There is no total key: the total loss is the sum of the
            values. Normalisers are per image (BD), so no all-reduce is needed.

        Raises:
            ValueError: on malformed targets or a missing ``semantic_logits``.
        """
        return super().forward(outputs, targets, generator=generator)


def build_criterion(loss_cfg, num_classes: int) -> KMaXCriterion:
    """Build :class:`KMaXCriterion` from a ``LossConfig``-like object (duck typing).

    Reads ``class_weight, dice_weight, mask_id_weight, instance_discrimination_weight,
    semantic_weight, focal_alpha, instance_discrimination_temperature, instance_sample_k,
    instance_sample_temperature, semantic_sample_k, semantic_sample_temperature,
    share_final_matching, mask_void_pixels``.

    Args:
        loss_cfg: the ``loss`` config section.
        num_classes: C.

    Returns:
        The criterion, with a :class:`HungarianMatcher`.
    """
    weights = {
        "loss_cls": loss_cfg.class_weight,
        "loss_dice": loss_cfg.dice_weight,
        "loss_mask_id": loss_cfg.mask_id_weight,
        "loss_insdis": loss_cfg.instance_discrimination_weight,
        "loss_sem": loss_cfg.semantic_weight,
    }
    return KMaXCriterion(
        num_classes,
        HungarianMatcher(mask_void_pixels=loss_cfg.mask_void_pixels),
        weights,
        focal_alpha=loss_cfg.focal_alpha,
        insdis_temperature=loss_cfg.instance_discrimination_temperature,
        insdis_sample_k=loss_cfg.instance_sample_k,
        insdis_sample_temperature=loss_cfg.instance_sample_temperature,
        semantic_sample_k=loss_cfg.semantic_sample_k,
        semantic_sample_temperature=loss_cfg.semantic_sample_temperature,
        share_final_matching=loss_cfg.share_final_matching,
        mask_void_pixels=loss_cfg.mask_void_pixels,
    )
