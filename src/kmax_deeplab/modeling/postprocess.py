"""Panoptic and semantic post-processing of mask-transformer outputs (pure functions).

Implements the "maskwise" merging of spec ``kmax_deeplab.md`` §3, as the bytedance (BD)
port runs it, with the deeplab2 (TF) behaviour behind ``variant="deeplab2"``:

==========================  =====================================  ==================================
step                        bytedance (default)                    deeplab2
==========================  =====================================  ==================================
mask logits resolution      upsample to canvas, crop the valid     upsample to canvas; merge there,
                            region, resize to the output size      then crop and resize (nearest)
mask score for reordering   at the output resolution               at the stride-4 logit resolution
class threshold             ``score > thr``                        ``score >= thr``
area limits                 none                                   per thing mask / per stuff class
==========================  =====================================  ==================================

Both: class probabilities are a softmax over ``C+1`` with void dropped (``class_activation=
"softmax_void"``; ``"sigmoid"`` takes ``[N, C]`` logits without void, as sigmoid-scored families
do); mask probabilities a softmax over queries at each pixel (``mask_activation="softmax"``;
``"sigmoid"`` scores each mask alone); binary masks ``prob > pixel_confidence_threshold``;
queries sorted by ``cls^w_c * mask^w_m`` (stable, descending); a query is kept when its
*class* probability passes its thing/stuff threshold and more than ``overlap_threshold``
of its binary mask is still unassigned; only unassigned pixels are painted; all stuff
queries of one class form one segment; unpainted pixels are void (id 0).

Nothing here reads a config: the caller passes thresholds (``PostProcessConfig``), the
catalog's thing flags and category ids, and the geometry (canvas, valid region, output size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CLASS_ACTIVATIONS", "MASK_ACTIVATIONS", "PanopticResult", "class_probabilities",
           "mask_probabilities", "resize_mask_logits", "panoptic_inference", "pixelwise_panoptic_inference",
           "pixelwise_semantic_inference", "semantic_inference",
           "semantic_probabilities"]

VARIANTS = ("bytedance", "deeplab2")
#: ``softmax_void``: softmax over ``[N, C+1]`` logits, void (last) dropped (kMaX, MaX);
#: ``sigmoid``: independent sigmoids of ``[N, C]`` logits (K-Net).
CLASS_ACTIVATIONS = ("softmax_void", "sigmoid")
#: ``softmax``: over the queries at each pixel (kMaX, MaX); ``sigmoid``: per mask (K-Net).
MASK_ACTIVATIONS = ("softmax", "sigmoid")


@dataclass
class PanopticResult:
    """One image's panoptic prediction, in the COCO-panoptic convention.

    Attributes:
        panoptic: ``[Ho, Wo]`` int32 segment ids, 0 = void.
        segments_info: ``{"id", "category_id", "isthing", "score", "area"}`` per segment, id order.
        label_map: ``[Ho, Wo]`` int64 ``category * label_divisor + instance`` (only when asked).
    """

    panoptic: Tensor
    segments_info: list
    label_map: Optional[Tensor] = None


def class_probabilities(pred_logits: Tensor, num_classes: int, activation: str = "softmax_void") -> Tensor:
    """``[N, C]`` float32 class probabilities of ``[N, C+1]`` (softmax_void) or ``[N, C]`` (sigmoid) logits.

    Raises:
        ValueError: unknown activation or a logits shape that does not fit it.
    """
    if activation not in CLASS_ACTIVATIONS:
        raise ValueError(f"class_activation must be one of {CLASS_ACTIVATIONS}, got {activation!r}")
    width = num_classes + 1 if activation == "softmax_void" else num_classes
    if pred_logits.dim() != 2 or pred_logits.shape[1] != width:
        what = f"[N, C+1] = [N, {width}] (void last)" if activation == "softmax_void" else f"[N, C] = [N, {width}]"
        raise ValueError(f"pred_logits must be {what} for class_activation={activation!r}, "
                         f"got shape {tuple(pred_logits.shape)}")
    if activation == "sigmoid":
        return pred_logits.float().sigmoid()
    # softmax over C+1, then drop void (spec §3 step 1)
    return pred_logits.float().softmax(-1)[:, :-1]


def mask_probabilities(mask_logits: Tensor, activation: str = "softmax") -> Tensor:
    """``[N, H, W]`` probabilities: softmax over the queries (dim 0) or a sigmoid per mask.

    Raises:
        ValueError: unknown activation.
    """
    if activation not in MASK_ACTIVATIONS:
        raise ValueError(f"mask_activation must be one of {MASK_ACTIVATIONS}, got {activation!r}")
    return mask_logits.softmax(0) if activation == "softmax" else mask_logits.sigmoid()


def _pair(size: Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"sizes must be positive, got {tuple(size)}")
    return h, w


def _geometry(pred_masks: Tensor, canvas_size, valid_size, output_size, align_corners):
    """Resolve the default geometry: canvas = logits size, valid = canvas, output = valid."""
    if pred_masks.dim() != 3:
        raise ValueError(f"pred_masks must be [N, h, w], got shape {tuple(pred_masks.shape)}")
    canvas = _pair(canvas_size, tuple(pred_masks.shape[-2:]))
    valid = _pair(valid_size, canvas)
    if valid[0] > canvas[0] or valid[1] > canvas[1]:
        raise ValueError(f"valid_size {valid} exceeds canvas_size {canvas}")
    output = _pair(output_size, valid)
    if align_corners is None:
        # BD switches align_corners on whenever the canvas width is odd (spec §1).
        align_corners = canvas[1] % 2 == 1
    return canvas, valid, output, bool(align_corners)


def _resize(x: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # bilinear resizing to the same size is the identity either way
    # [n, h, w] -> [1, n, h, w] -> [n, H, W]
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=align_corners)[0]


def resize_mask_logits(pred_masks: Tensor, *, canvas_size: Sequence[int] | None = None,
                       valid_size: Sequence[int] | None = None,
                       output_size: Sequence[int] | None = None,
                       align_corners: bool | None = None, chunk: int = 16) -> Tensor:
    """Bring stride-4 mask logits to the original image size, as BD's inference does.

    The logits are upsampled (bilinear) to the padded ``canvas_size``, cropped to the
    top-left ``valid_size`` region that holds the resized image, and resized (bilinear)
    to ``output_size``. Queries are processed ``chunk`` at a time so the canvas-sized
    intermediate stays small.

    Args:
        pred_masks: ``[N, h, w]`` mask logits (any float dtype; computed in float32).
        canvas_size: ``(H, W)`` of the padded model input; default ``(h, w)`` (no upsampling).
        valid_size: ``(Hv, Wv)`` of the image inside the canvas; default the canvas.
        output_size: ``(Ho, Wo)`` of the original image; default ``valid_size``.
        align_corners: bilinear mode; ``None`` = BD's rule (on when the canvas width is odd).
        chunk: queries resized at once.

    Returns:
        ``[N, Ho, Wo]`` float32 logits.

    Raises:
        ValueError: ``pred_masks`` is not 3-D, a size is not positive, or ``valid_size``
            exceeds ``canvas_size``.
    """
    canvas, valid, output, ac = _geometry(pred_masks, canvas_size, valid_size, output_size,
                                          align_corners)
    out = []
    for start in range(0, pred_masks.shape[0], max(1, chunk)):
        x = _resize(pred_masks[start:start + chunk].float(), canvas, ac)
        x = x[:, :valid[0], :valid[1]]
        out.append(_resize(x, output, ac))
    if not out:
        return pred_masks.new_zeros((0, *output), dtype=torch.float32)
    return torch.cat(out, 0)


def _class_scores(pred_logits: Tensor, num_classes: int, activation: str = "softmax_void") -> tuple[Tensor, Tensor]:
    return class_probabilities(pred_logits, num_classes, activation).max(-1)


def _mask_scores(mask_prob: Tensor, binary: Tensor) -> Tensor:
    """Mean of ``mask_prob`` over each binary mask; 0 for an empty mask. ``[N, H, W] -> [N]``."""
    # [N, H, W] -> [N, H*W]
    binary_f = binary.flatten(1).float()
    total = (mask_prob.flatten(1) * binary_f).sum(1)
    return total / binary_f.sum(1).clamp(min=1.0)


def _merge(order: Tensor, cls_scores: Tensor, cls_labels: Tensor, binary: Tensor,
           thing_flags: Tensor, *, thing_threshold: float, stuff_threshold: float,
           overlap_threshold: float, inclusive: bool,
           fuse_flags: Tensor | None = None) -> tuple[Tensor, list[dict[str, Any]]]:
    """Paint queries in ``order`` onto an empty id map (spec §3 step 5).

    ``fuse_flags[train_id]`` (default: not a thing) marks the classes whose queries are
    fused into one segment per class.

    Returns ``(ids [H, W] int32, segments)``; each segment carries its train id, thing flag,
    the class score and the rank (0-based position in ``order``) of the query that opened it.
    """
    if fuse_flags is None:
        fuse_flags = ~thing_flags
    ids = torch.zeros(binary.shape[-2:], dtype=torch.int32, device=binary.device)
    segments: list[dict[str, Any]] = []
    stuff_segment: dict[int, int] = {}
    for rank, q in enumerate(order.tolist()):
        label = int(cls_labels[q])
        score = float(cls_scores[q])
        thing = bool(thing_flags[label])
        thr = thing_threshold if thing else stuff_threshold
        if not (score >= thr if inclusive else score > thr):
            continue
        mask = binary[q]
        original = int(mask.sum())
        new_mask = mask & (ids == 0)
        new = int(new_mask.sum())
        if not new > original * overlap_threshold:
            continue
        fuse = bool(fuse_flags[label])
        if fuse and label in stuff_segment:
            ids[new_mask] = stuff_segment[label]
            continue
        seg_id = len(segments) + 1
        if fuse:
            stuff_segment[label] = seg_id
        ids[new_mask] = seg_id
        segments.append({"id": seg_id, "train_id": label, "isthing": thing, "score": score,
                         "rank": rank})
    return ids, segments


def _area_filter(ids: Tensor, segments: list[dict[str, Any]], thing_area_limit: int,
                 stuff_area_limit: int) -> None:
    """deeplab2's ``_filter_by_count``: segments with fewer pixels than their limit -> void.

    Thing segments are counted per mask id, stuff per class; as stuff of one class is one
    segment here, both are counts per segment id. Modifies ``ids`` in place.
    """
    counts = torch.bincount(ids.flatten().long(), minlength=len(segments) + 1)
    for seg in segments:
        limit = thing_area_limit if seg["isthing"] else stuff_area_limit
        if limit > 0 and int(counts[seg["id"]]) < limit:
            ids[ids == seg["id"]] = 0


def _crop_resize_nearest(ids: Tensor, valid: tuple[int, int], output: tuple[int, int]) -> Tensor:
    ids = ids[:valid[0], :valid[1]]
    if tuple(ids.shape) == tuple(output):
        return ids.contiguous()
    # [Hv, Wv] -> [1, 1, Hv, Wv] (float for interpolate) -> [Ho, Wo]
    out = F.interpolate(ids[None, None].float(), size=output, mode="nearest")[0, 0]
    return out.round().to(torch.int32)


def panoptic_inference(
    pred_logits: Tensor,
    pred_masks: Tensor,
    *,
    is_thing: Sequence[bool],
    train_id_to_category_id: Sequence[int] | None = None,
    thing_threshold: float = 0.7,
    stuff_threshold: float = 0.5,
    overlap_threshold: float = 0.8,
    pixel_confidence_threshold: float = 0.4,
    class_weight: float = 1.0,
    mask_weight: float = 1.0,
    canvas_size: Sequence[int] | None = None,
    valid_size: Sequence[int] | None = None,
    output_size: Sequence[int] | None = None,
    align_corners: bool | None = None,
    variant: str = "bytedance",
    thing_area_limit: int = 0,
    stuff_area_limit: int = 0,
    return_label_map: bool = False,
    label_divisor: int = 256,
    ignore_label: int = 0,
    class_activation: str = "softmax_void",
    mask_activation: str = "softmax",
    label_ids_to_fuse: Sequence[int] | None = None,
) -> PanopticResult:
    """Mask-wise panoptic merging of one image's prediction (spec §3).

    Args:
        pred_logits: ``[N, C+1]`` class logits of one image, void last.
        pred_masks: ``[N, h, w]`` mask logits of one image (stride 4 of the canvas, or any
            size when ``canvas_size`` is ``None``).
        is_thing: length ``C``; ``is_thing[train_id]`` is True for thing classes.
        train_id_to_category_id: length ``C``; dataset category id of each train id
            (default: the train id itself).
        thing_threshold / stuff_threshold: class-probability thresholds (COCO 0.7 / 0.5).
        overlap_threshold: a query is dropped unless more than this fraction of its binary
            mask is still unassigned (COCO 0.8).
        pixel_confidence_threshold: binary mask = mask probability above this (0.4).
        class_weight / mask_weight: exponents ``w_c``, ``w_m`` of the reorder score.
        canvas_size: ``(H, W)`` padded model input the logits cover; default the logits size.
        valid_size: ``(Hv, Wv)`` top-left region of the canvas holding the image.
        output_size: ``(Ho, Wo)`` original image size; default ``valid_size``.
        align_corners: bilinear mode; ``None`` = on when the canvas width is odd (BD).
        variant: ``"bytedance"`` or ``"deeplab2"`` (see the module docstring).
        thing_area_limit / stuff_area_limit: deeplab2 only; segments with fewer pixels at
            canvas resolution become void (0 = off; COCO 400 / 6400).
        return_label_map: also return ``semantic * label_divisor + instance`` with
            semantic = the category id, thing instance = query rank + 1, stuff instance 0,
            void = ``ignore_label * label_divisor``.
        label_divisor / ignore_label: for the label map (COCO 256 / 0).
        class_activation: ``"softmax_void"`` (``pred_logits`` ``[N, C+1]``) or ``"sigmoid"``
            (``[N, C]``), the family's (:data:`CLASS_ACTIVATIONS`).
        mask_activation: ``"softmax"`` over queries or ``"sigmoid"`` per mask.
        label_ids_to_fuse: train ids whose queries merge into one segment per class
            (Hugging Face's meaning); default ``None`` = every stuff class (``is_thing``
            False), the reference behaviour. Thresholds still follow ``is_thing``.

    Returns:
        A :class:`PanopticResult`: ``panoptic`` ``[Ho, Wo]`` int32 segment ids (0 = void);
        ``segments_info`` a list of ``{"id", "category_id", "isthing", "score", "area"}`` in id
        order (``score`` = class probability of the highest-ranked query of the segment,
        ``area`` = its pixel count in ``panoptic``); ``label_map`` ``[Ho, Wo]`` int64 with
        ``return_label_map``, else None. Tensors are on the device of the inputs.

    Raises:
        ValueError: bad shapes, an unknown ``variant``, or ``is_thing`` /
            ``train_id_to_category_id`` not of length ``C``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    num_classes = len(is_thing)
    if train_id_to_category_id is None:
        train_id_to_category_id = list(range(num_classes))
    if len(train_id_to_category_id) != num_classes:
        raise ValueError(f"train_id_to_category_id has {len(train_id_to_category_id)} entries, "
                         f"is_thing has {num_classes}")
    if pred_masks.dim() != 3 or pred_masks.shape[0] != pred_logits.shape[0]:
        raise ValueError(f"pred_masks must be [N, h, w] with N = {pred_logits.shape[0]}, got "
                         f"shape {tuple(pred_masks.shape)}")
    canvas, valid, output, ac = _geometry(pred_masks, canvas_size, valid_size, output_size,
                                          align_corners)
    cls_scores, cls_labels = _class_scores(pred_logits, num_classes, class_activation)
    if mask_activation not in MASK_ACTIVATIONS:
        raise ValueError(f"mask_activation must be one of {MASK_ACTIVATIONS}, got {mask_activation!r}")
    thing_flags = torch.tensor([bool(t) for t in is_thing])
    fuse_flags = None
    if label_ids_to_fuse is not None:
        fuse_flags = torch.zeros(num_classes, dtype=torch.bool)
        for label in label_ids_to_fuse:
            if not 0 <= int(label) < num_classes:
                raise ValueError(f"label_ids_to_fuse: {label} is not a train id in 0..{num_classes - 1}")
            fuse_flags[int(label)] = True
    kwargs = dict(thing_threshold=thing_threshold, stuff_threshold=stuff_threshold,
                  overlap_threshold=overlap_threshold, fuse_flags=fuse_flags)

    if variant == "bytedance":
        logits = resize_mask_logits(pred_masks, canvas_size=canvas, valid_size=valid,
                                    output_size=output, align_corners=ac)
        mask_prob = mask_probabilities(logits, mask_activation)  # kMaX: softmax over queries
        binary = mask_prob > pixel_confidence_threshold
        mask_scores = _mask_scores(mask_prob, binary)
        del mask_prob
        reorder = cls_scores.pow(class_weight) * mask_scores.pow(mask_weight)
        order = torch.argsort(reorder.cpu(), descending=True, stable=True)
        ids, segments = _merge(order, cls_scores.cpu(), cls_labels.cpu(), binary, thing_flags,
                               inclusive=False, **kwargs)
    else:
        # deeplab2: reorder scores at the logit resolution ...
        prob_lr = mask_probabilities(pred_masks.float(), mask_activation)
        mask_scores = _mask_scores(prob_lr, prob_lr > pixel_confidence_threshold)
        del prob_lr
        reorder = cls_scores.pow(class_weight) * mask_scores.pow(mask_weight)
        order = torch.argsort(reorder.cpu(), descending=True, stable=True)
        # ... merging and area limits at canvas ("crop") resolution, then crop and resize.
        logits = resize_mask_logits(pred_masks, canvas_size=canvas, align_corners=ac)
        binary = mask_probabilities(logits, mask_activation) > pixel_confidence_threshold
        del logits
        ids, segments = _merge(order, cls_scores.cpu(), cls_labels.cpu(), binary, thing_flags,
                               inclusive=True, **kwargs)
        _area_filter(ids, segments, thing_area_limit, stuff_area_limit)
        ids = _crop_resize_nearest(ids, valid, output)

    counts = torch.bincount(ids.flatten().long(), minlength=len(segments) + 1).cpu()
    segments_info = []
    for seg in segments:
        area = int(counts[seg["id"]])
        if area == 0:  # removed by an area limit, or lost to the crop / resize
            continue
        segments_info.append({"id": seg["id"],
                              "category_id": int(train_id_to_category_id[seg["train_id"]]),
                              "isthing": seg["isthing"], "score": seg["score"], "area": area})
    if not return_label_map:
        return PanopticResult(ids, segments_info)
    label_map = torch.full(ids.shape, ignore_label * label_divisor, dtype=torch.int64,
                           device=ids.device)
    by_id = {seg["id"]: seg for seg in segments}
    for info in segments_info:
        seg = by_id[info["id"]]
        instance = seg["rank"] + 1 if seg["isthing"] else 0
        label_map[ids == info["id"]] = info["category_id"] * label_divisor + instance
    return PanopticResult(ids, segments_info, label_map)


def semantic_probabilities(pred_logits: Tensor, pred_masks: Tensor, *, class_activation: str = "softmax_void",
                           mask_activation: str = "softmax", **geometry) -> Tensor:
    """BD's semantic output: ``sum_n softmax(cls)_n[:C] * softmax_n(mask)`` (spec §3).

    Args:
        pred_logits: ``[N, C+1]`` class logits, void last (``[N, C]`` with ``"sigmoid"``).
        pred_masks: ``[N, h, w]`` mask logits.
        class_activation / mask_activation: see :func:`panoptic_inference`.
        **geometry: ``canvas_size``, ``valid_size``, ``output_size``, ``align_corners`` as in
            :func:`resize_mask_logits`.

    Returns:
        ``[C, Ho, Wo]`` float32 class scores (softmax_void: void dropped, they sum to <= 1).
    """
    num_classes = pred_logits.shape[-1] - (1 if class_activation == "softmax_void" else 0)
    cls_prob = class_probabilities(pred_logits, num_classes, class_activation)
    mask_prob = mask_probabilities(resize_mask_logits(pred_masks, **geometry), mask_activation)
    # [N, C] x [N, Ho, Wo] -> [C, Ho, Wo]
    return torch.einsum("nc,nhw->chw", cls_prob, mask_prob)


def semantic_inference(pred_logits: Tensor, pred_masks: Tensor, **kwargs) -> Tensor:
    """Per-pixel train id: the argmax of :func:`semantic_probabilities` (for mIoU).

    Returns:
        ``[Ho, Wo]`` int64 train ids in ``0..C-1``.
    """
    return semantic_probabilities(pred_logits, pred_masks, **kwargs).argmax(0)


def pixelwise_panoptic_inference(
    pred_logits: Tensor,
    pred_masks: Tensor,
    *,
    is_thing: Sequence[bool],
    train_id_to_category_id: Sequence[int] | None = None,
    class_threshold: float = 0.7,
    pixel_confidence_threshold: float = 0.4,
    canvas_size: Sequence[int] | None = None,
    valid_size: Sequence[int] | None = None,
    output_size: Sequence[int] | None = None,
    thing_area_limit: int = 0,
    stuff_area_limit: int = 0,
    return_label_map: bool = False,
    label_divisor: int = 256,
    ignore_label: int = 0,
):
    """MaX-DeepLab's "pixelwise" panoptic post-processing of one image (spec ``max_deeplab.md`` §4).

    deeplab2 ``post_processor/max_deeplab.py`` (``transformer_post_processing='pixelwise'``):

    1. per slot, softmax over the ``C+1`` classes, void dropped; class = argmax, confidence
       = its probability; slots with confidence ``>= class_threshold`` are kept (none kept:
       the whole image is void);
    2. the mask logits are upsampled to the canvas (bilinear, align corners);
    3. dropped slots get logit −99999; a pixel's slot is the argmax over the kept ones;
    4. a pixel is void unless the maximum slot softmax (kept slots) is
       ``> pixel_confidence_threshold`` and its unconstrained argmax slot is a kept one;
    5. the pixel's class is its slot's class; thing pixels form one segment per slot, stuff
       pixels one segment per class;
    6. at canvas resolution, thing segments (per slot) with fewer than ``thing_area_limit``
       pixels and stuff classes with fewer than ``stuff_area_limit`` become void (0 = off;
       COCO 641: 100 / 1600, 1025: 256 / 4096);
    7. the canvas map is cropped to ``valid_size`` and resized (nearest) to ``output_size``.

    Args:
        pred_logits: ``[N, C+1]`` class logits of one image, void last.
        pred_masks: ``[N, h, w]`` mask logits (stride 4 of the canvas).
        is_thing: length C, thing flag per train id.
        train_id_to_category_id: length C; default the train id.
        class_threshold: slot confidence threshold (0.7).
        pixel_confidence_threshold: pixel confidence threshold (0.4).
        canvas_size / valid_size / output_size: geometry as in :func:`panoptic_inference`
            (defaults: the logits size, the canvas, the valid region).
        thing_area_limit / stuff_area_limit: area filters (pixels at canvas resolution).
        return_label_map: also return ``category * label_divisor + instance`` (thing
            instance = slot + 1 as in deeplab2, stuff 0, void ``ignore_label * label_divisor``).
        label_divisor / ignore_label: for the label map.

    Returns:
        ``(panoptic, segments_info)`` or ``(panoptic, segments_info, label_map)``, the
        contract of :func:`panoptic_inference` (``score`` = the slot's class confidence, for
        stuff the highest among the class's slots).

    Raises:
        ValueError: bad shapes or ``is_thing`` / ``train_id_to_category_id`` lengths.
    """
    num_classes = len(is_thing)
    if train_id_to_category_id is None:
        train_id_to_category_id = list(range(num_classes))
    if len(train_id_to_category_id) != num_classes:
        raise ValueError(f"train_id_to_category_id has {len(train_id_to_category_id)} entries, "
                         f"is_thing has {num_classes}")
    if pred_logits.dim() != 2 or pred_logits.shape[1] != num_classes + 1:
        raise ValueError(f"pred_logits must be [N, C+1] with C = {num_classes}, got {tuple(pred_logits.shape)}")
    if pred_masks.dim() != 3 or pred_masks.shape[0] != pred_logits.shape[0]:
        raise ValueError(f"pred_masks must be [N, h, w] with N = {pred_logits.shape[0]}, got "
                         f"shape {tuple(pred_masks.shape)}")
    canvas, valid, output, _ = _geometry(pred_masks, canvas_size, valid_size, output_size, True)
    device = pred_masks.device
    probs = pred_logits.float().softmax(-1)[:, :num_classes]  # [N, C], void dropped after normalising
    confidence, classes = probs.max(-1)
    keep = confidence >= class_threshold  # [N]
    ids = torch.zeros(canvas, dtype=torch.int32, device=device)
    segments: list[dict[str, Any]] = []
    if bool(keep.any()):
        logits = resize_mask_logits(pred_masks, canvas_size=canvas, align_corners=True)  # [N, H, W]
        detected = torch.where(keep[:, None, None], logits, torch.full_like(logits, -99999.0))
        slot_prob = detected.softmax(0).amax(0)
        slot = detected.argmax(0)  # [H, W]
        confident = (slot_prob > pixel_confidence_threshold) & (logits.amax(0) == detected.amax(0))
        del logits, detected
        thing_flags = torch.tensor([bool(t) for t in is_thing], device=device)
        pixel_class = classes[slot]
        pixel_thing = thing_flags[pixel_class]
        thing_px = confident & pixel_thing
        stuff_px = confident & ~pixel_thing
        if thing_area_limit > 0:
            counts = torch.bincount(slot[thing_px].flatten(), minlength=pred_masks.shape[0])
            thing_px &= counts[slot] >= thing_area_limit
        if stuff_area_limit > 0:
            counts = torch.bincount(pixel_class[stuff_px].flatten(), minlength=num_classes)
            stuff_px &= counts[pixel_class] >= stuff_area_limit
        conf_cpu, cls_cpu = confidence.cpu(), classes.cpu()
        for s in torch.unique(slot[thing_px]).tolist():
            seg_id = len(segments) + 1
            ids[thing_px & (slot == s)] = seg_id
            segments.append({"id": seg_id, "train_id": int(cls_cpu[s]), "isthing": True,
                             "score": float(conf_cpu[s]), "instance": s + 1})
        for c in torch.unique(pixel_class[stuff_px]).tolist():
            seg_id = len(segments) + 1
            region = stuff_px & (pixel_class == c)
            ids[region] = seg_id
            score = float(conf_cpu[torch.unique(slot[region]).cpu()].max())
            segments.append({"id": seg_id, "train_id": c, "isthing": False, "score": score, "instance": 0})
    ids = _crop_resize_nearest(ids, valid, output)
    counts = torch.bincount(ids.flatten().long(), minlength=len(segments) + 1).cpu()
    segments_info = []
    for seg in segments:
        area = int(counts[seg["id"]])
        if area == 0:
            continue
        segments_info.append({"id": seg["id"], "category_id": int(train_id_to_category_id[seg["train_id"]]),
                              "isthing": seg["isthing"], "score": seg["score"], "area": area})
    if not return_label_map:
        return ids, segments_info
    label_map = torch.full(ids.shape, ignore_label * label_divisor, dtype=torch.int64, device=ids.device)
    by_id = {seg["id"]: seg for seg in segments}
    for info in segments_info:
        label_map[ids == info["id"]] = info["category_id"] * label_divisor + by_id[info["id"]]["instance"]
    return ids, segments_info, label_map


def pixelwise_semantic_inference(pred_logits: Tensor, pred_masks: Tensor, *,
                                 canvas_size: Sequence[int] | None = None, valid_size: Sequence[int] | None = None,
                                 output_size: Sequence[int] | None = None) -> Tensor:
    """MaX-DeepLab's semantic prediction: the class of each pixel's argmax slot (no thresholds).

    deeplab2's second post-processor (``post_processor/max_deeplab.py``, thresholds 0, no area
    limits): per slot the argmax over the C classes (void dropped after the softmax); mask
    logits upsampled to the canvas (align corners); per pixel the argmax slot; crop, nearest resize.

    Args:
        pred_logits: ``[N, C+1]``; pred_masks: ``[N, h, w]``; geometry as in
            :func:`pixelwise_panoptic_inference`.

    Returns:
        ``[Ho, Wo]`` int64 train ids.
    """
    canvas, valid, output, _ = _geometry(pred_masks, canvas_size, valid_size, output_size, True)
    num_classes = pred_logits.shape[-1] - 1
    classes = pred_logits.float().softmax(-1)[:, :num_classes].argmax(-1)  # [N]
    slot = resize_mask_logits(pred_masks, canvas_size=canvas, align_corners=True).argmax(0)  # [H, W]
    return _crop_resize_nearest(classes[slot].to(torch.int32), valid, output).long()
