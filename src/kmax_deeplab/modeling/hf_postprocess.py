"""Batched post-processing in Hugging Face's conventions (``MaskFormerImageProcessor`` style).

``transformers``' MaskFormer / Mask2Former image processors expose
``post_process_panoptic_segmentation(outputs, threshold, mask_threshold,
overlap_mask_area_threshold, label_ids_to_fuse, target_sizes)`` and return one
``{"segmentation", "segments_info"}`` dict per image. These functions take the same
arguments with the same meaning and return the same structure, but the merging underneath is
the mask-transformer merging of :func:`kmax_deeplab.modeling.postprocess.panoptic_inference`
(the reference behaviour of the model family; spec ``kmax_deeplab.md`` §3), so with the
defaults they give exactly the :class:`~kmax_deeplab.engine.predictor.Predictor`'s maps.

What each Hugging Face argument means here:

- ``threshold``: a query is kept only if its class probability (softmax over C+1, void
  dropped) is above it. ``None`` keeps the family's separate ``thing_threshold`` /
  ``stuff_threshold``.
- ``mask_threshold``: a pixel belongs to a query's binary mask when the query's mask
  probability (softmax over queries for kMaX) is above it (kMaX's
  ``pixel_confidence_threshold``, 0.4).
- ``overlap_mask_area_threshold``: a query is dropped unless the part of its binary mask
  still free when it is painted, divided by the whole binary mask, is above it.
- ``label_ids_to_fuse``: train ids whose queries are fused into one segment per class
  (``was_fused``). Hugging Face fuses nothing by default; here ``None`` fuses every stuff
  class of ``is_thing``, which is what the model family does (pass ``()`` to fuse nothing).
- ``target_sizes``: ``(height, width)`` of each output map (the original image size);
  ``None`` = the valid (un-padded) region at the logits' canvas resolution.

Differences from Hugging Face, on purpose: no segment is always 0 in ``segmentation``
(Hugging Face gives -1 when an image has no segment at all and 0 otherwise); ids start at 1;
masks are resized to the canvas, cropped to the image and resized to ``target_sizes``, never
to a fixed 384x384.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from kmax_deeplab.modeling.postprocess import panoptic_inference, semantic_inference

__all__ = ["post_process_panoptic_segmentation", "post_process_semantic_segmentation",
           "post_process_instance_segmentation", "batch_geometry"]

# Hugging Face's output keys, accepted as aliases of ours.
_ALIASES = {"pred_logits": "class_queries_logits", "pred_masks": "masks_queries_logits"}


def _get(outputs: Any, key: str) -> Any:
    for name in (key, _ALIASES.get(key, key)):
        if isinstance(outputs, Mapping) and name in outputs:
            return outputs[name]
        if not isinstance(outputs, Mapping) and hasattr(outputs, name):
            return getattr(outputs, name)
    raise KeyError(f"outputs: missing {key!r} (or {_ALIASES.get(key, key)!r})")


def batch_geometry(outputs: Any, target_sizes: Any = None) -> tuple[Tensor, Tensor, list[dict]]:
    """Logits and the per-image resize geometry of a batched model output.

    Args:
        outputs: a mapping (or object) with ``pred_logits [B, N, C+1]`` and
            ``pred_masks [B, N, h, w]`` (Hugging Face's ``class_queries_logits`` /
            ``masks_queries_logits`` also work) and optionally ``canvas_size (Hc, Wc)``
            (the padded model input, ``batch_size`` in :meth:`Predictor.forward_batch`;
            default ``(h, w)``) and ``valid_sizes``, one ``(Hv, Wv)``
            per image (the region holding the resized image; default the whole canvas), as
            :meth:`Predictor.forward_batch` returns them.
        target_sizes: ``B`` pairs ``(H, W)`` (list, or an int tensor ``[B, 2]``) or ``None``.

    Returns:
        ``(pred_logits, pred_masks, geometries)``, one dict of ``canvas_size``, ``valid_size``,
        ``output_size`` per image.

    Raises:
        ValueError: batch sizes of the logits, ``valid_sizes`` and ``target_sizes`` differ.
    """
    logits, masks = _get(outputs, "pred_logits"), _get(outputs, "pred_masks")
    if logits.dim() != 3 or masks.dim() != 4 or logits.shape[:2] != masks.shape[:2]:
        raise ValueError(f"outputs: pred_logits must be [B, N, C+1] and pred_masks [B, N, h, w] "
                         f"with equal B, N; got {tuple(logits.shape)} and {tuple(masks.shape)}")
    batch = logits.shape[0]
    canvas = None
    if isinstance(outputs, Mapping):  # the Predictor calls the model input size "batch_size"
        canvas = outputs.get("canvas_size", outputs.get("batch_size"))
    canvas = tuple(int(s) for s in (canvas or masks.shape[-2:]))
    valid = outputs.get("valid_sizes") if isinstance(outputs, Mapping) else None
    valid = [tuple(int(s) for s in v) for v in valid] if valid is not None else [canvas] * batch
    if target_sizes is None:
        targets = list(valid)
    else:
        targets = [tuple(int(s) for s in t) for t in
                   (target_sizes.tolist() if isinstance(target_sizes, Tensor) else target_sizes)]
    if len(valid) != batch or len(targets) != batch:
        raise ValueError(f"outputs hold {batch} images but valid_sizes has {len(valid)} and "
                         f"target_sizes {len(targets)} entries")
    geoms = [dict(canvas_size=canvas, valid_size=v, output_size=t) for v, t in zip(valid, targets)]
    return logits, masks, geoms


def post_process_panoptic_segmentation(
    outputs: Any,
    threshold: float | None = None,
    mask_threshold: float = 0.4,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: Sequence[int] | None = None,
    target_sizes: Any = None,
    *,
    is_thing: Sequence[bool],
    thing_threshold: float = 0.7,
    stuff_threshold: float = 0.5,
    **merge_options: Any,
) -> list[dict[str, Any]]:
    """Panoptic maps of a batch, Hugging Face's signature and return structure.

    Args:
        outputs: batched model output, see :func:`batch_geometry`.
        threshold: class-probability threshold for every class; ``None`` = ``thing_threshold``
            for thing classes and ``stuff_threshold`` for stuff (the family's rule).
        mask_threshold: mask-probability threshold of the binary masks.
        overlap_mask_area_threshold: minimum free fraction of a query's binary mask.
        label_ids_to_fuse: train ids merged into one segment per class; ``None`` = the stuff
            classes of ``is_thing``.
        target_sizes: ``(H, W)`` per image, see :func:`batch_geometry`.
        is_thing: length ``C``, ``True`` for thing train ids.
        thing_threshold / stuff_threshold: used when ``threshold`` is ``None``.
        **merge_options: further keywords of
            :func:`~kmax_deeplab.modeling.postprocess.panoptic_inference` (``variant``,
            ``class_weight``, ``mask_weight``, ``thing_area_limit``, ``stuff_area_limit``,
            ``train_id_to_category_id``).

    Returns:
        One dict per image: ``segmentation`` ``[H, W]`` int32 tensor of segment ids (0 = no
        segment) and ``segments_info``, a list of ``{"id", "label_id", "was_fused", "score"}``
        (``label_id`` the train id) in id order, as Hugging Face returns them.

    Raises:
        KeyError / ValueError: missing output keys, bad shapes, a label id out of range.
    """
    logits, masks, geoms = batch_geometry(outputs, target_sizes)
    if threshold is not None:
        thing_threshold = stuff_threshold = float(threshold)
    num_classes = len(is_thing)
    if label_ids_to_fuse is None:
        fused = [not t for t in is_thing]
    else:
        wanted = {int(x) for x in label_ids_to_fuse}
        bad = sorted(x for x in wanted if not 0 <= x < num_classes)
        if bad:
            raise ValueError(f"label_ids_to_fuse: {bad} are not train ids in 0..{num_classes - 1}")
        fused = [i in wanted for i in range(num_classes)]
    results = []
    with torch.no_grad():
        for i, geom in enumerate(geoms):
            result = panoptic_inference(
                logits[i], masks[i], is_thing=is_thing, thing_threshold=thing_threshold,
                stuff_threshold=stuff_threshold, overlap_threshold=overlap_mask_area_threshold,
                pixel_confidence_threshold=mask_threshold,
                label_ids_to_fuse=[c for c in range(num_classes) if fused[c]],
                train_id_to_category_id=None, **geom,
                **{k: v for k, v in merge_options.items() if k != "train_id_to_category_id"})
            pan, info = result.panoptic, result.segments_info
            # category_id is the train id here (train_id_to_category_id=None)
            results.append({"segmentation": pan, "segments_info": [
                {"id": s["id"], "label_id": s["category_id"], "was_fused": fused[s["category_id"]],
                 "score": round(float(s["score"]), 6)} for s in info]})
    return results


def post_process_semantic_segmentation(outputs: Any, target_sizes: Any = None, *,
                                       class_activation: str = "softmax_void",
                                       mask_activation: str = "softmax") -> list[Tensor]:
    """Semantic maps of a batch (Hugging Face's ``post_process_semantic_segmentation``).

    Per pixel the argmax over classes of ``sum_n softmax(cls)_n[:C] * softmax_n(mask)``
    (:func:`~kmax_deeplab.modeling.postprocess.semantic_inference`; the activations are the
    family's).

    Returns:
        One ``[H, W]`` int64 tensor of train ids per image.
    """
    logits, masks, geoms = batch_geometry(outputs, target_sizes)
    with torch.no_grad():
        return [semantic_inference(logits[i], masks[i], class_activation=class_activation,
                                   mask_activation=mask_activation, **g)
                for i, g in enumerate(geoms)]


def post_process_instance_segmentation(
    outputs: Any,
    threshold: float | None = None,
    mask_threshold: float = 0.4,
    overlap_mask_area_threshold: float = 0.8,
    target_sizes: Any = None,
    return_binary_maps: bool = False,
    *,
    is_thing: Sequence[bool],
    thing_threshold: float = 0.7,
    **merge_options: Any,
) -> list[dict[str, Any]]:
    """Instance masks of a batch (Hugging Face's ``post_process_instance_segmentation``).

    kMaX has no separate instance head: the instances are the thing segments of the panoptic
    merging (so they never overlap and agree with the panoptic map). Stuff queries still take
    part in the merging with ``stuff_threshold`` (see ``merge_options``).

    Returns:
        One dict per image: ``segmentation`` ``[H, W]`` int32 with instance ids ``0..K-1`` and
        -1 on background (Hugging Face's convention), or with ``return_binary_maps`` a
        ``[K, H, W]`` bool tensor; ``segments_info`` ``[{"id", "label_id", "was_fused": False,
        "score"}]``.
    """
    stuff_threshold = merge_options.pop("stuff_threshold", 0.5)
    panoptic = post_process_panoptic_segmentation(
        outputs, threshold, mask_threshold, overlap_mask_area_threshold, None, target_sizes,
        is_thing=is_thing, thing_threshold=thing_threshold, stuff_threshold=stuff_threshold,
        **merge_options)
    results = []
    for res in panoptic:
        pan = res["segmentation"]
        things = [s for s in res["segments_info"] if is_thing[s["label_id"]]]
        instance_map = torch.full_like(pan, -1)
        binary = torch.zeros((len(things), *pan.shape), dtype=torch.bool, device=pan.device)
        info = []
        for k, seg in enumerate(things):
            mask = pan == seg["id"]
            instance_map[mask] = k
            binary[k] = mask
            info.append({"id": k, "label_id": seg["label_id"], "was_fused": False,
                         "score": seg["score"]})
        results.append({"segmentation": binary if return_binary_maps else instance_map,
                        "segments_info": info})
    return results
