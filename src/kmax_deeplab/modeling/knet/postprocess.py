"""K-Net inference: panoptic merging and instance results (knet.md §7; pure functions).

Source: ZwwWayne/K-Net ``knet/det/kernel_iter_head.py`` (``get_panoptic``,
``merge_stuff_thing``, ``simple_test``) and ``kernel_update_head.py`` (``rescale_masks``).

Geometry (both tasks): the last stage's stride-4 mask logits are sigmoided, resized
bilinearly (align_corners False) to the padded canvas, cropped to the valid region and
resized to the output (original image) size.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knet_instance_inference", "knet_mask_probabilities", "knet_panoptic_inference"]


def knet_mask_probabilities(pred_masks: Tensor, *, canvas_size: Sequence[int], valid_size: Sequence[int],
                            output_size: Sequence[int]) -> Tensor:
    """Mask probabilities at the output size (mmdet ``rescale_masks``).

    Args:
        pred_masks: ``[N, h, w]`` mask logits (stride 4 of the canvas).
        canvas_size: ``(Hp, Wp)`` padded model input.
        valid_size: ``(Hv, Wv)`` top-left region holding the resized image.
        output_size: ``(Ho, Wo)`` original image size.

    Returns:
        ``[N, Ho, Wo]`` float32 probabilities in [0, 1].

    Raises:
        ValueError: ``pred_masks`` not 3-D or ``valid_size`` larger than ``canvas_size``.
    """
    if pred_masks.dim() != 3:
        raise ValueError(f"pred_masks must be [N, h, w], got shape {tuple(pred_masks.shape)}")
    (hp, wp), (hv, wv) = tuple(canvas_size), tuple(valid_size)
    if hv > hp or wv > wp:
        raise ValueError(f"valid_size {(hv, wv)} exceeds canvas_size {(hp, wp)}")
    x = F.interpolate(pred_masks.float()[None].sigmoid(), size=(int(hp), int(wp)), mode="bilinear",
                      align_corners=False)[:, :, :hv, :wv]
    return F.interpolate(x, size=tuple(int(s) for s in output_size), mode="bilinear", align_corners=False)[0]


def knet_panoptic_inference(pred_logits: Tensor, pred_masks: Tensor, *, num_thing_classes: int,
                            num_kernels: int, canvas_size: Sequence[int], valid_size: Sequence[int],
                            output_size: Sequence[int], train_id_to_category_id: Sequence[int] | None = None,
                            instance_score_threshold: float = 0.3, overlap_threshold: float = 0.6,
                            mask_threshold: float = 0.5) -> tuple[Tensor, list[dict[str, Any]]]:
    """K-Net's panoptic merging of one image (knet.md §7) into the shared contract.

    Thing kernels ``k < num_kernels`` score ``max`` over the thing classes only; stuff
    kernel ``num_kernels + j`` scores its own class ``num_thing_classes + j`` (the diagonal).
    Each pixel belongs to ``argmax_k(score_k · mask_k)``. Kernels are visited by descending
    score; a thing below ``instance_score_threshold`` is skipped (stuff has no threshold); a
    kernel is written when both its owned area and its own area (``mask ≥ mask_threshold``)
    are non-zero and their ratio is at least ``overlap_threshold``. Unwritten pixels are void.

    Args:
        pred_logits: ``[N, C]`` per-class sigmoid logits of the last stage.
        pred_masks: ``[N, h, w]`` its stride-4 mask logits.
        num_thing_classes: thing classes (COCO 80); classes ``≥`` it are stuff.
        num_kernels: thing kernels (100); the others are the ``C - num_thing_classes``
            stuff kernels in class order.
        canvas_size, valid_size, output_size: see :func:`knet_mask_probabilities`.
        train_id_to_category_id: length C; dataset category id of each class (default identity).
        instance_score_threshold, overlap_threshold, mask_threshold: 0.3, 0.6, 0.5.

    Returns:
        ``(panoptic, segments_info)``: ``panoptic`` ``[Ho, Wo]`` int32 segment ids, 0 = void,
        ids 1, 2, ... in writing order (mmdet's ``label + (id - 1) · 1000``);
        ``segments_info`` ``[{"id", "category_id", "isthing", "score", "area"}]`` in id order.

    Raises:
        ValueError: shapes that disagree with ``num_kernels`` / the stuff count, or a
            ``train_id_to_category_id`` not of length C.
    """
    n, num_classes = pred_logits.shape
    num_stuff = num_classes - num_thing_classes
    if n != num_kernels + num_stuff or pred_masks.shape[0] != n:
        raise ValueError(f"K-Net panoptic inference needs {num_kernels} thing + {num_stuff} stuff kernels, "
                         f"got pred_logits {tuple(pred_logits.shape)} and pred_masks {tuple(pred_masks.shape)}")
    if train_id_to_category_id is None:
        train_id_to_category_id = list(range(num_classes))
    if len(train_id_to_category_id) != num_classes:
        raise ValueError(f"train_id_to_category_id has {len(train_id_to_category_id)} entries, expected {num_classes}")
    scores = pred_logits.float().sigmoid()
    thing_scores, thing_labels = scores[:num_kernels, :num_thing_classes].max(dim=1)
    stuff_scores = scores[num_kernels:, num_thing_classes:].diagonal()
    stuff_labels = torch.arange(num_thing_classes, num_classes, device=scores.device)
    total_scores = torch.cat([thing_scores, stuff_scores])
    total_labels = torch.cat([thing_labels, stuff_labels])
    masks = knet_mask_probabilities(pred_masks, canvas_size=canvas_size, valid_size=valid_size,
                                    output_size=output_size)
    owner = (total_scores.view(-1, 1, 1) * masks).argmax(0)
    panoptic = torch.zeros(owner.shape, dtype=torch.int32, device=owner.device)
    segments: list[dict[str, Any]] = []
    for k in torch.argsort(-total_scores).tolist():
        label = int(total_labels[k])
        isthing = label < num_thing_classes
        score = float(total_scores[k])
        if isthing and score < instance_score_threshold:
            continue
        region = owner == k
        area = int(region.sum())
        own_area = int((masks[k] >= mask_threshold).sum())
        if area == 0 or own_area == 0 or area / own_area < overlap_threshold:
            continue
        seg_id = len(segments) + 1
        panoptic[region] = seg_id
        segments.append({"id": seg_id, "category_id": int(train_id_to_category_id[label]),
                         "isthing": bool(isthing), "score": score, "area": area})
    return panoptic, segments


def knet_instance_inference(pred_logits: Tensor, pred_masks: Tensor, *, canvas_size: Sequence[int],
                            valid_size: Sequence[int], output_size: Sequence[int], max_per_image: int = 100,
                            mask_threshold: float = 0.5,
                            train_id_to_category_id: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """K-Net's instance results for one image (knet.md §7.7; mmdet ``simple_test``).

    The ``max_per_image`` best (kernel, class) pairs of the sigmoid scores ``[N, C]``
    (sorted by score) each give one instance: that kernel's mask ``> mask_threshold`` at the
    output size, labelled with that class.

    Args:
        pred_logits: ``[N, C]`` sigmoid class logits.
        pred_masks: ``[N, h, w]`` stride-4 mask logits.
        canvas_size, valid_size, output_size: see :func:`knet_mask_probabilities`.
        max_per_image: pairs kept (100).
        mask_threshold: 0.5.
        train_id_to_category_id: length C; dataset category id of each class (default identity).

    Returns:
        ``[{"mask", "category_id", "score", "segmentation"}]``, best first; ``mask`` is a
        ``[Ho, Wo]`` bool tensor, ``segmentation`` its COCO RLE (``pycocotools.mask.encode``,
        ``counts`` decoded to ``str``).
    """
    from pycocotools import mask as mask_utils

    n, num_classes = pred_logits.shape
    if train_id_to_category_id is None:
        train_id_to_category_id = list(range(num_classes))
    scores, index = pred_logits.float().sigmoid().flatten().topk(min(max_per_image, n * num_classes), sorted=True)
    kernels = torch.div(index, num_classes, rounding_mode="floor")
    labels = index % num_classes
    probs = knet_mask_probabilities(pred_masks[kernels], canvas_size=canvas_size, valid_size=valid_size,
                                    output_size=output_size)
    binary = probs > mask_threshold
    masks_np = binary.cpu().numpy()
    results = []
    for i in range(len(kernels)):
        rle = mask_utils.encode(np.asfortranarray(masks_np[i].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"mask": binary[i], "category_id": int(train_id_to_category_id[int(labels[i])]),
                        "score": float(scores[i]), "segmentation": rle})
    return results
