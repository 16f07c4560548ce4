"""K-Net's assignment and losses (knet.md §6), as the original code computes them.

Sources: ZwwWayne/K-Net ``knet/det/{knet,kernel_head,kernel_iter_head,kernel_update_head,
mask_hungarian_assigner}.py``; mmdet 2.28 ``FocalLoss`` (pure-PyTorch branch),
``CrossEntropyLoss`` (sigmoid / softmax), ``DiceLoss`` (squared denominators, eps 1e-3),
``FocalLossCost`` and ``weight_reduce_loss`` (``sum / (avg_factor + eps_fp32)``).

Terms (keys as the original logs them; each already weighted):

* kernel head on M0 (100 thing masks) and S: ``loss_rpn_mask`` (BCE, 1), ``loss_rpn_dice``
  (4), ``loss_rpn_rank`` (0.1, panoptic only; ``loss_rank`` when nothing matched, the
  original's quirk), ``loss_rpn_seg`` (sigmoid focal on S, 1);
* each update stage s: ``s{s}_loss_cls`` (sigmoid focal, 2), ``s{s}_loss_mask`` (1),
  ``s{s}_loss_dice`` (4), ``s{s}_loss_rank`` (0.1, panoptic only).

All masks and targets live at stride 4 of the padded canvas. Ground-truth masks are padded
with 0 to the canvas and resized *bilinearly* to stride 4 (soft targets). Stage s is
assigned on stage s−1's detached predictions (stage 0 on the kernel head's M0), with cost
``2·focal(cls) + 1·mask + 4·dice`` on the 100 thing kernels and the 80 thing classes only;
stuff kernel ``N_thing + j`` is fixed to stuff class ``T + j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import fp32_region
from .matching import linear_assignment

__all__ = [
    "KNetCriterion",
    "KNetImageTargets",
    "build_knet_criterion",
    "build_knet_targets",
    "dice_loss",
    "knet_match",
    "rank_loss",
    "sigmoid_focal_loss",
]

#: mmdet's ``weight_reduce_loss`` adds this to an ``avg_factor``.
_EPS = torch.finfo(torch.float32).eps
IGNORE = 255


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, *, weight: Optional[Tensor] = None,
                       avg_factor: float | Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al., 2017) summed and divided by ``avg_factor + eps``.

    Args:
        logits: ``[P, C]`` float.
        labels: ``[P]`` int64 in ``[0, C]``; ``C`` = background (an all-zero one-hot row).
        weight: optional ``[P, C]`` (or ``[P]``) element weights.
        avg_factor: normaliser (number of positives).
        alpha, gamma: 0.25, 2.

    Returns:
        Scalar ``Σ w · BCE(x, t) · (α t + (1−α)(1−t)) · p_t^γ / (avg_factor + eps)`` with
        ``p_t = (1−σ)t + σ(1−t)`` (mmdet ``py_sigmoid_focal_loss``).
    """
    num_classes = logits.shape[1]
    target = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)
    prob = logits.sigmoid()
    pt = (1 - prob) * target + prob * (1 - target)
    focal = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * focal
    if weight is not None:
        loss = loss * (weight if weight.dim() == 2 else weight[:, None])
    return loss.sum() / (avg_factor + _EPS)


def dice_loss(mask_logits: Tensor, targets: Tensor, eps: float = 1e-3) -> Tensor:
    """Mean over masks of ``1 − 2Σpt / (Σp² + eps + Σt² + eps)``, ``p = σ(logits)`` (mmdet ``DiceLoss``).

    Args:
        mask_logits: ``[P, h, w]``; targets: ``[P, h, w]`` soft targets in [0, 1].
    """
    p = mask_logits.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    a = (p * t).sum(1)
    b = (p * p).sum(1) + eps
    c = (t * t).sum(1) + eps
    return (1 - 2 * a / (b + c)).mean()


def rank_loss(mask_logits: Tensor, rank_target: Tensor) -> Tensor:
    """Softmax cross-entropy over the kernels per pixel, averaged over ALL ``B·h·w`` pixels.

    Args:
        mask_logits: ``[B, N, h, w]``; rank_target: ``[B, h, w]`` int64 kernel index or 255 (ignored).
    """
    return F.cross_entropy(mask_logits, rank_target, ignore_index=IGNORE, reduction="none").mean()


@torch.no_grad()
def knet_match(mask_logits: Tensor, gt_masks: Tensor, *, cls_logits: Optional[Tensor] = None,
               gt_labels: Optional[Tensor] = None, cls_weight: float = 2.0, mask_weight: float = 1.0,
               dice_weight: float = 4.0, alpha: float = 0.25, gamma: float = 2.0,
               eps: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Hungarian assignment of K-Net's ``MaskHungarianAssigner`` (knet.md §6.2).

    Cost ``[N, M]`` (lower is better), with ``p = σ(mask_logits)``, ``t`` the soft targets:

    * ``cls_weight · (pos − neg)[:, labels]`` with ``s = σ(cls_logits)``,
      ``pos = −log(s + 1e-12) α (1−s)^γ``, ``neg = −log(1 − s + 1e-12) (1−α) s^γ`` (only
      when ``cls_logits`` is given);
    * ``mask_weight · −(Σ p t + Σ (1−p)(1−t)) / (h w)``;
    * ``dice_weight · −2 Σ p t / (Σ p² + eps + Σ t² + eps)``.

    Args:
        mask_logits: ``[N, h, w]`` predictions (detached).
        gt_masks: ``[M, h, w]`` soft targets.
        cls_logits: optional ``[N, C']`` class logits (K-Net: the 80 thing classes).
        gt_labels: ``[M]`` labels into ``C'`` (needed with ``cls_logits``).

    Returns:
        ``(pred_idx, gt_idx)`` int64, ``pred_idx`` ascending; empty when M = 0.
    """
    device = mask_logits.device
    if gt_masks.shape[0] == 0 or mask_logits.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    with fp32_region(device):
        p = mask_logits.float().sigmoid()
        t = gt_masks.float()
        hw = p.shape[-2] * p.shape[-1]
        pos = torch.einsum("nhw,mhw->nm", p, t)
        neg = torch.einsum("nhw,mhw->nm", 1 - p, 1 - t)
        cost = mask_weight * (-(pos + neg) / hw)
        pf, tf = p.flatten(1), t.flatten(1)
        dice = 2 * (pf @ tf.t()) / ((pf * pf).sum(1) + eps)[:, None].add((tf * tf).sum(1)[None] + eps)
        cost = cost + dice_weight * (-dice)
        if cls_logits is not None and cls_weight != 0:
            s = cls_logits.float().sigmoid()
            neg_c = -(1 - s + 1e-12).log() * (1 - alpha) * s.pow(gamma)
            pos_c = -(s + 1e-12).log() * alpha * (1 - s).pow(gamma)
            cost = cost + cls_weight * (pos_c[:, gt_labels] - neg_c[:, gt_labels])
    return linear_assignment(cost)


@dataclass
class KNetImageTargets:
    """One image's stride-4 K-Net targets.

    Attributes:
        thing_masks: ``[M, h, w]`` float soft masks of the non-crowd things.
        thing_labels: ``[M]`` int64 in ``[0, T)``.
        stuff_masks: ``[S, h, w]`` float soft masks of the stuff classes present (class order).
        stuff_labels: ``[S]`` int64 in ``[T, C)``.
    """

    thing_masks: Tensor
    thing_labels: Tensor
    stuff_masks: Tensor
    stuff_labels: Tensor


def build_knet_targets(targets: Sequence[Mapping[str, Tensor]], canvas_size: Sequence[int], *,
                       num_thing_classes: int, with_stuff: bool, stride: int = 4) -> List[KNetImageTargets]:
    """Shared panoptic targets -> K-Net's soft stride-4 targets (knet.md §6.1; ``KNet.forward_train``).

    Crowd segments are dropped (they act as negatives). Masks are padded with 0 to the canvas
    and resized bilinearly (align_corners False) to ``canvas / stride``. Stuff: one mask per
    stuff class present (the union of its segments), in class order; none when not
    ``with_stuff`` (instance task).

    Args:
        targets: per image ``masks`` bool ``[M, H, W]`` (H, W ≤ canvas), ``labels`` int64
            ``[M]``, ``is_crowd`` bool ``[M]``.
        canvas_size: ``(Hp, Wp)`` of the model's padded input.

    Raises:
        ValueError: missing keys or masks larger than the canvas (names the image).
    """
    hp, wp = (int(s) for s in canvas_size)
    size = (hp // stride, wp // stride)
    out = []
    for i, t in enumerate(targets):
        for key in ("masks", "labels", "is_crowd"):
            if key not in t:
                raise ValueError(f"K-Net targets: image {i} has no {key!r} (have {sorted(t)})")
        masks, labels, crowd = t["masks"], t["labels"].long(), t["is_crowd"].bool()
        h, w = masks.shape[-2:]
        if h > hp or w > wp:
            raise ValueError(f"K-Net targets: image {i} masks are {(h, w)}, larger than the canvas {(hp, wp)}")
        keep_thing = (labels < num_thing_classes) & ~crowd
        groups = [(masks[keep_thing], labels[keep_thing])]
        if with_stuff:
            stuff_ids = sorted({int(c) for c, k in zip(labels.tolist(), crowd.tolist())
                                if c >= num_thing_classes and not k})
            stuff = [masks[(labels == c) & ~crowd].any(0) for c in stuff_ids]
            groups.append((torch.stack(stuff) if stuff else masks.new_zeros((0, h, w)),
                           torch.tensor(stuff_ids, dtype=torch.int64, device=labels.device)))
        soft = []
        for m, lab in groups:
            if m.shape[0] == 0:
                soft.append((torch.zeros((0, *size), device=masks.device), lab))
                continue
            m = F.pad(m.float(), (0, wp - w, 0, hp - h))
            soft.append((F.interpolate(m[None], size, mode="bilinear", align_corners=False)[0], lab))
        if not with_stuff:
            soft.append((torch.zeros((0, *size), device=masks.device),
                         torch.zeros(0, dtype=torch.int64, device=labels.device)))
        out.append(KNetImageTargets(soft[0][0], soft[0][1], soft[1][0], soft[1][1]))
    return out


def _rank_target(mask_targets: Tensor, pos: Tensor) -> Tensor:
    """``[B, N, h, w]`` targets, ``[B, N]`` bool positives -> ``[B, h, w]`` (later index wins)."""
    b, _, h, w = mask_targets.shape
    target = torch.full((b, h, w), IGNORE, dtype=torch.int64, device=mask_targets.device)
    for i in range(b):
        for j in torch.nonzero(pos[i]).flatten().tolist():
            target[i][mask_targets[i, j] > 0] = j
    return target


class KNetCriterion(nn.Module):
    """K-Net's training losses (module docstring) over the :class:`~kmax_deeplab.modeling.knet.KNet` outputs.

    Args:
        num_classes: C (panoptic 133, instance 80).
        num_thing_classes: T (80).
        num_kernels: thing kernels (100).
        with_stuff: panoptic (stuff kernels and targets) or instance.
        rank_weight: 0.1 for panoptic (``loss_rank``), ``None`` = no rank loss (instance configs).
        cls_weight, mask_weight, dice_weight, seg_weight: 2, 1, 4, 1.
        stage_weights: per-stage multipliers (1, 1, 1).
        alpha, gamma: focal constants (0.25, 2).
    """

    def __init__(self, num_classes: int, *, num_thing_classes: int = 80, num_kernels: int = 100,
                 with_stuff: bool = True, rank_weight: Optional[float] = 0.1, cls_weight: float = 2.0,
                 mask_weight: float = 1.0, dice_weight: float = 4.0, seg_weight: float = 1.0,
                 stage_weights: Sequence[float] = (1.0, 1.0, 1.0), alpha: float = 0.25,
                 gamma: float = 2.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_thing_classes = num_thing_classes
        self.num_kernels = num_kernels
        self.with_stuff = with_stuff
        self.rank_weight = rank_weight
        self.cls_weight, self.mask_weight, self.dice_weight = cls_weight, mask_weight, dice_weight
        self.seg_weight = seg_weight
        self.stage_weights = tuple(stage_weights)
        self.alpha, self.gamma = alpha, gamma

    # -- one set of predictions against assigned targets
    def _assign(self, masks: Tensor, cls: Optional[Tensor], tgt: Sequence[KNetImageTargets]) -> list:
        n, t = self.num_kernels, self.num_thing_classes
        return [knet_match(masks[i, :n].detach(), tg.thing_masks,
                           cls_logits=None if cls is None else cls[i, :n, :t].detach(), gt_labels=tg.thing_labels,
                           alpha=self.alpha, gamma=self.gamma)
                for i, tg in enumerate(tgt)]

    def _mask_terms(self, masks: Tensor, mask_targets: Tensor, pos: Tensor, prefix: str, rank: bool,
                    weight: float) -> Dict[str, Tensor]:
        out = {}
        if pos.any():
            out[f"{prefix}mask"] = weight * self.mask_weight * F.binary_cross_entropy_with_logits(
                masks[pos], mask_targets[pos])
            out[f"{prefix}dice"] = weight * self.dice_weight * dice_loss(masks[pos], mask_targets[pos])
            if rank:
                out[f"{prefix}rank"] = weight * self.rank_weight * rank_loss(masks, _rank_target(mask_targets, pos))
        else:
            zero = masks.sum() * 0
            out[f"{prefix}mask"], out[f"{prefix}dice"] = zero, zero
            if rank:
                # the original writes ``loss_rank`` for the kernel head here (kernel_head.py:401)
                out["loss_rank" if prefix == "loss_rpn_" else f"{prefix}rank"] = zero
        return out

    def _head_terms(self, outputs: Mapping[str, Tensor], tgt: Sequence[KNetImageTargets]) -> Dict[str, Tensor]:
        masks = outputs["init_masks"]  # [B, N_thing, h, w]
        b, n, h, w = masks.shape
        matches = self._assign(masks, None, tgt)
        labels = torch.full((b, n), self.num_classes, dtype=torch.int64, device=masks.device)
        mask_targets = masks.new_zeros((b, n, h, w))
        seg_targets = torch.full((b, h, w), self.num_classes, dtype=torch.int64, device=masks.device)
        for i, ((rows, cols), tg) in enumerate(zip(matches, tgt)):
            labels[i, rows] = tg.thing_labels[cols]
            mask_targets[i, rows] = tg.thing_masks[cols]
            for m, c in zip(tg.stuff_masks, tg.stuff_labels):
                seg_targets[i][m.bool()] = c
            for j in range(len(rows)):
                seg_targets[i][tg.thing_masks[cols[j]].bool()] = tg.thing_labels[cols[j]]
        pos = labels < self.num_classes
        out = self._mask_terms(masks, mask_targets, pos, "loss_rpn_", self.rank_weight is not None, 1.0)
        sem = outputs["semantic_logits"]
        flat = sem.permute(0, 2, 3, 1).reshape(-1, sem.shape[1])
        flat_t = seg_targets.flatten()
        num_dense = (flat_t < self.num_classes).sum().float().clamp(min=1.0)
        out["loss_rpn_seg"] = self.seg_weight * sigmoid_focal_loss(flat, flat_t, avg_factor=num_dense,
                                                                   alpha=self.alpha, gamma=self.gamma)
        return out

    def _stage_terms(self, s: int, out_s: Mapping[str, Tensor], prev_masks: Tensor, prev_cls: Optional[Tensor],
                     tgt: Sequence[KNetImageTargets]) -> Dict[str, Tensor]:
        cls, masks = out_s["pred_logits"], out_s["pred_masks"]
        b, n_all, h, w = masks.shape
        n, t, c = self.num_kernels, self.num_thing_classes, self.num_classes
        matches = self._assign(prev_masks, prev_cls, tgt)
        labels = torch.full((b, n_all), c, dtype=torch.int64, device=masks.device)
        label_w = masks.new_ones((b, n_all, c))
        mask_targets = masks.new_zeros((b, n_all, h, w))
        for i, ((rows, cols), tg) in enumerate(zip(matches, tgt)):
            labels[i, rows] = tg.thing_labels[cols]
            mask_targets[i, rows] = tg.thing_masks[cols]
            if self.with_stuff:
                label_w[i, :n, t:] = 0  # thing kernels never trained on stuff classes
                label_w[i, n:] = 0
                label_w[i, n:, t:] = torch.eye(c - t, device=masks.device)  # stuff kernel j: own column only
                idx = n + tg.stuff_labels - t
                labels[i, idx] = tg.stuff_labels
                mask_targets[i, idx] = tg.stuff_masks
        pos = labels < c
        num_pos = pos.sum().float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_pos)
            num_pos = num_pos / torch.distributed.get_world_size()
        weight = self.stage_weights[s]
        out = {f"s{s}_loss_cls": weight * self.cls_weight * sigmoid_focal_loss(
            cls.reshape(b * n_all, c), labels.flatten(), weight=label_w.reshape(b * n_all, c),
            avg_factor=num_pos.clamp(min=1.0), alpha=self.alpha, gamma=self.gamma)}
        out.update(self._mask_terms(masks, mask_targets, pos, f"s{s}_loss_", self.rank_weight is not None, weight))
        return out

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Tensor]]) -> Dict[str, Tensor]:
        """Weighted loss terms of one batch.

        Args:
            outputs: :class:`~kmax_deeplab.modeling.knet.KNet` training outputs (``init_masks``,
                ``init_all_masks``, ``semantic_logits``, ``aux_outputs``, ``pred_logits``,
                ``pred_masks``, ``canvas_size``).
            targets: the shared per-image panoptic targets (``masks``, ``labels``, ``is_crowd``),
                at most canvas-sized.

        Returns:
            name -> scalar (see the module docstring).

        Raises:
            ValueError: malformed targets or a batch-size mismatch.
        """
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"KNetCriterion: {len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]}")
        with fp32_region(outputs["pred_logits"].device):
            tgt = build_knet_targets(targets, outputs["canvas_size"], num_thing_classes=self.num_thing_classes,
                                     with_stuff=self.with_stuff)
            losses = self._head_terms(outputs, tgt)
            prev_masks, prev_cls = outputs["init_all_masks"], None
            for s, out_s in enumerate(list(outputs["aux_outputs"]) + [outputs]):
                losses.update(self._stage_terms(s, out_s, prev_masks, prev_cls, tgt))
                prev_masks, prev_cls = out_s["pred_masks"], out_s["pred_logits"]
        return losses


def build_knet_criterion(loss_cfg: Any, model_cfg: Any) -> KNetCriterion:
    """:class:`KNetCriterion` from the ``loss`` and ``model`` config sections (duck typed)."""
    panoptic = model_cfg.task == "panoptic"
    return KNetCriterion(model_cfg.num_classes, num_thing_classes=model_cfg.num_thing_classes,
                         num_kernels=model_cfg.num_queries, with_stuff=panoptic,
                         rank_weight=loss_cfg.rank_weight if panoptic else None, cls_weight=loss_cfg.class_weight,
                         mask_weight=loss_cfg.mask_weight, dice_weight=loss_cfg.dice_weight,
                         seg_weight=loss_cfg.semantic_weight,
                         stage_weights=[1.0] * model_cfg.num_stages, alpha=loss_cfg.focal_alpha,
                         gamma=loss_cfg.focal_gamma)
