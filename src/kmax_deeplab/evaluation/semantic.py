"""Semantic metrics (mIoU, per-class IoU, pixel accuracy).

Two entry points:

* :class:`SemSegAccumulator` (and :func:`intersect_and_union` /
  :func:`total_area_to_metrics`) for label maps, identical to mmsegmentation 0.30's
  definition (``mmseg/core/evaluation/metrics.py``: ``intersect_and_union``,
  ``total_area_to_metrics``; summary as ``CustomDataset.evaluate``: ``nanmean``).
* :class:`SemanticAccumulator` for panoptic maps, below.

For panoptic maps each pixel's class is its segment's ``category_id``. GT VOID pixels (id 0 when not
listed) are ignored. A prediction VOID pixel on a labelled GT pixel counts as a miss
for that GT class (a false negative, never a false positive of another class). The
confusion matrix comes from the per-image segment intersection counts of
:func:`~kmax_deeplab.evaluation.pairing.pair_segments`, so no extra pass over pixels.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from kmax_deeplab.evaluation.errors import PanopticEvaluationError, SemanticEvaluationError
from kmax_deeplab.evaluation.pairing import SegmentPairing, pair_segments
from kmax_deeplab.evaluation.panoptic_io import categories_by_id

__all__ = ["SemanticAccumulator", "SemSegAccumulator", "intersect_and_union",
           "total_area_to_metrics"]


class SemanticAccumulator:
    """Confusion matrix ``[K, K+1]`` int64 (rows GT class, columns predicted class,
    last column = predicted VOID); mergeable and picklable.

    Args:
        categories: category dicts (``id``) or ``{id: category}``; K = len(categories).
    """

    def __init__(self, categories: Sequence[dict] | Mapping[int, dict]):
        self.categories = categories_by_id(categories)
        self._cat_index = {cid: i for i, cid in enumerate(self.categories)}
        k = len(self.categories)
        self.confusion = np.zeros((k, k + 1), dtype=np.int64)

    def update(self, gt_panoptic: np.ndarray, gt_segments_info: Sequence[dict],
               pred_panoptic: np.ndarray, pred_segments_info: Sequence[dict], *,
               image_id: Any = None) -> None:
        """Add one image (arguments as in ``PanopticQualityAccumulator.update``)."""
        self.update_from_pairing(pair_segments(gt_panoptic, gt_segments_info, pred_panoptic,
                                               pred_segments_info, image_id=image_id),
                                 image_id=image_id)

    def update_from_pairing(self, pairing: SegmentPairing, *, image_id: Any = None) -> None:
        """Add one image from a :class:`SegmentPairing`."""
        k = len(self.categories)
        rows = np.full(pairing.counts.shape[0], -1, dtype=np.int64)  # -1: ignored (VOID)
        cols = np.full(pairing.counts.shape[1], k, dtype=np.int64)  # k: predicted VOID
        for i, s in enumerate(pairing.gt_segments):
            rows[i + 1] = self._index(s, "ground-truth", image_id)
        for j, s in enumerate(pairing.pred_segments):
            cols[j + 1] = self._index(s, "predicted", image_id)
        keep = rows >= 0
        # [Rg, Rp] segment counts -> [K, K+1] class counts.
        sub = pairing.counts[keep]
        flat = (rows[keep][:, None] * (k + 1) + cols[None, :]).ravel()
        self.confusion += _weighted_bincount(flat, sub.ravel(), k * (k + 1)).reshape(k, k + 1)

    def _index(self, s: dict, what: str, image_id: Any) -> int:
        try:
            return self._cat_index[s["category_id"]]
        except (KeyError, TypeError):
            raise PanopticEvaluationError(
                f"image {image_id!r}: {what} segment {s.get('id')} has unknown category_id "
                f"{s.get('category_id')!r}") from None

    def merge(self, other: "SemanticAccumulator") -> "SemanticAccumulator":
        """Add ``other``'s confusion matrix; returns self."""
        if list(other.categories) != list(self.categories):
            raise ValueError("cannot merge semantic accumulators with different categories")
        self.confusion += other.confusion
        return self

    def state_dict(self) -> dict:
        """Picklable state."""
        return {"category_ids": list(self.categories), "confusion": self.confusion.tolist()}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore from :meth:`state_dict`."""
        if list(state["category_ids"]) != list(self.categories):
            raise ValueError("state_dict was made with different categories")
        self.confusion = np.asarray(state["confusion"], dtype=np.int64).copy()

    def compute(self) -> dict:
        """Return ``{"miou", "pixel_accuracy", "per_class_iou": {cat_id: iou or None}}``.

        IoU per class = TP / (TP + FP + FN) over non-VOID GT pixels; classes absent from
        both GT and prediction get ``None`` and are left out of the mean (as detectron2's
        ``SemSegEvaluator``). Pixel accuracy = correct / labelled GT pixels.
        """
        k = len(self.categories)
        conf = self.confusion
        tp = np.diag(conf[:, :k]).astype(np.float64)
        gt_total = conf.sum(axis=1).astype(np.float64)  # includes predicted VOID
        pred_total = conf[:, :k].sum(axis=0).astype(np.float64)
        union = gt_total + pred_total - tp
        valid = union > 0
        iou = np.divide(tp, union, out=np.zeros(k), where=valid)
        per_class = {cid: (float(iou[i]) if valid[i] else None) for i, cid in enumerate(self.categories)}
        total = conf.sum()
        return {
            "miou": float(iou[valid].mean()) if valid.any() else 0.0,
            "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
            "per_class_iou": per_class,
        }


def _weighted_bincount(flat: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=np.int64)
    np.add.at(out, flat, weights)
    return out


# --------------------------------------------------------------------------------------
# Label-map metrics, mmsegmentation 0.30's definition.
# --------------------------------------------------------------------------------------

def reduce_zero_label_map(label: np.ndarray) -> np.ndarray:
    """ADE20K's ``reduce_zero_label``: 0 becomes 255 (ignore), every other value ``v``
    becomes ``v - 1``, and raw 255 stays 255 (``mmseg`` ``intersect_and_union`` and
    ``LoadAnnotations``).

    Args:
        label: integer label map ``[H, W]`` (any integer dtype).
    Returns:
        int64 ``[H, W]``.
    """
    out = label.astype(np.int64) - 1
    out[(label == 0) | (label == 255)] = 255
    return out


def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int,
                        ignore_index: int = 255, *, label_map: Mapping[int, int] | None = None,
                        reduce_zero_label: bool = False, image_id: Any = None,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class pixel areas of one image, as mmseg 0.30 ``intersect_and_union``.

    ``label_map`` (old -> new, applied to a copy so chains do not cascade) is applied
    first, then ``reduce_zero_label``; pixels whose (mapped) label equals
    ``ignore_index`` are dropped. Pixels whose label or prediction lies outside
    ``[0, num_classes)`` (and is not ignored) fall outside every class bin, as mmseg's
    ``torch.histc`` drops them: such a label pixel counts in no class; such a
    prediction counts as no class's prediction (but its GT class still gets the pixel
    in ``area_label``).

    Args:
        pred: predicted class ids ``[H, W]``, integer dtype.
        label: ground-truth class ids ``[H, W]``, integer dtype (raw PNG values).
        num_classes: K.
        ignore_index: GT value to ignore (255 in mmseg).
        label_map: optional ``{old: new}`` remapping of GT values.
        reduce_zero_label: ADE20K rule, see :func:`reduce_zero_label_map`.
        image_id: named in error messages.
    Returns:
        ``(area_intersect, area_union, area_pred_label, area_label)``, each int64 ``[K]``.
    Raises:
        SemanticEvaluationError: shapes differ or a map is not an integer array.
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise SemanticEvaluationError(
            f"image {image_id!r}: prediction shape {pred.shape} != ground-truth shape {label.shape}")
    for what, a in (("prediction", pred), ("ground truth", label)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise SemanticEvaluationError(
                f"image {image_id!r}: {what} label map has dtype {a.dtype}, expected integers")
    lab = label.astype(np.int64)
    if label_map:
        orig = lab.copy()
        for old, new in label_map.items():
            lab[orig == old] = new
    if reduce_zero_label:
        lab = reduce_zero_label_map(lab)
    keep = lab != ignore_index
    p = pred.astype(np.int64)[keep]
    g = lab[keep]
    k = int(num_classes)

    def hist(v: np.ndarray) -> np.ndarray:
        v = v[(v >= 0) & (v < k)]
        return np.bincount(v, minlength=k).astype(np.int64)

    area_intersect = hist(p[p == g])
    area_pred = hist(p)
    area_label = hist(g)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def total_area_to_metrics(area_intersect: np.ndarray, area_union: np.ndarray,
                          area_pred_label: np.ndarray, area_label: np.ndarray) -> dict:
    """mmseg 0.30 ``total_area_to_metrics(..., metrics=['mIoU'])`` plus the summary of
    ``CustomDataset.evaluate`` (``nanmean``, not rounded).

    Args:
        area_*: summed per-class pixel areas ``[K]`` (from :func:`intersect_and_union`).
    Returns:
        ``{"aAcc": float, "mIoU": float, "mAcc": float, "IoU": float64 [K],
        "Acc": float64 [K]}``; ``IoU[c]`` is NaN where class c is absent from both GT and
        prediction (union 0), ``Acc[c]`` NaN where c is absent from GT; the means skip
        NaN (NaN when every class is NaN). Fractions in [0, 1], not percent.
    """
    inter = np.asarray(area_intersect, dtype=np.float64)
    union = np.asarray(area_union, dtype=np.float64)
    label = np.asarray(area_label, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
        acc = inter / label
        total = label.sum()
        aacc = float(inter.sum() / total) if total else float("nan")
    return {"aAcc": aacc, "mIoU": _nanmean(iou), "mAcc": _nanmean(acc), "IoU": iou, "Acc": acc}


def _nanmean(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else float("nan")


class SemSegAccumulator:
    """Summed per-class areas over images (mmseg's ``pre_eval`` results, summed);
    mergeable and picklable.

    Args:
        num_classes: K (150 for ADE20K).
        ignore_index: GT value to ignore (255).
        reduce_zero_label: apply ADE20K's rule to the raw GT (see
            :func:`reduce_zero_label_map`); predictions are never reduced.
        label_map: optional ``{old: new}`` GT remapping applied before the reduction.
        class_names: optional names (length K) used as keys of ``per_class_iou``.
    Raises:
        ValueError: ``num_classes < 1`` or ``class_names`` of the wrong length.
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255, reduce_zero_label: bool = False,
                 label_map: Mapping[int, int] | None = None, class_names: Sequence[str] | None = None):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.label_map = dict(label_map or {})
        self.class_names = list(class_names) if class_names is not None else None
        self.areas = np.zeros((4, self.num_classes), dtype=np.int64)
        self.num_images = 0

    def update(self, pred: np.ndarray, label: np.ndarray, *, image_id: Any = None) -> None:
        """Add one image: ``pred`` and raw ``label`` integer maps ``[H, W]``."""
        self.areas += np.stack(intersect_and_union(
            pred, label, self.num_classes, self.ignore_index, label_map=self.label_map,
            reduce_zero_label=self.reduce_zero_label, image_id=image_id))
        self.num_images += 1

    def merge(self, other: "SemSegAccumulator") -> "SemSegAccumulator":
        """Add ``other``'s areas; returns self. Raises ValueError on different settings."""
        if (other.num_classes, other.ignore_index, other.reduce_zero_label, other.label_map) != (
                self.num_classes, self.ignore_index, self.reduce_zero_label, self.label_map):
            raise ValueError("cannot merge semantic accumulators with different settings")
        self.areas += other.areas
        self.num_images += other.num_images
        return self

    def state_dict(self) -> dict:
        """Picklable state."""
        return {"num_classes": self.num_classes, "areas": self.areas.tolist(),
                "num_images": self.num_images}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore from :meth:`state_dict`."""
        if int(state["num_classes"]) != self.num_classes:
            raise ValueError("state_dict was made with a different num_classes")
        self.areas = np.asarray(state["areas"], dtype=np.int64).reshape(4, self.num_classes).copy()
        self.num_images = int(state["num_images"])

    def compute(self) -> dict:
        """:func:`total_area_to_metrics` of the summed areas, plus
        ``per_class_iou`` (``{name or index: IoU or None}``, None where NaN) and
        ``num_images``."""
        out = total_area_to_metrics(*self.areas)
        names = self.class_names or list(range(self.num_classes))
        out["per_class_iou"] = {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, out["IoU"])}
        out["num_images"] = self.num_images
        return out


def evaluate_semantic_folders(gt_folder: str, pred_folder: str, num_classes: int, *, ignore_index: int = 255,
                              reduce_zero_label: bool = False, class_names: Sequence[str] | None = None,
                              gt_suffix: str = ".png", pred_suffix: str = ".png") -> dict:
    """mmseg-identical mIoU of a folder of predicted label PNGs against a folder of GT PNGs.

    Every ``gt_folder/**/<name><gt_suffix>`` needs ``pred_folder/<name><pred_suffix>``
    (same relative path); predictions hold class ids ``0..K-1`` (after the reduction, as
    mmseg's ``format_results``/``kmax predict --task semantic``), GT the raw dataset values.

    Returns:
        :meth:`SemSegAccumulator.compute` of all images.
    Raises:
        SemanticEvaluationError: a folder is missing or empty, a prediction is missing, a
            PNG is unreadable or multi-channel, or the sizes differ.
    """
    from pathlib import Path

    from kmax_deeplab.data.image_io import PanopticDataError
    from kmax_deeplab.data.semantic import load_label_png

    gt_dir, pred_dir = Path(gt_folder), Path(pred_folder)
    for what, d in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not d.is_dir():
            raise SemanticEvaluationError(f"{d}: {what} folder not found")
    gts = sorted(p for p in gt_dir.rglob(f"*{gt_suffix}") if p.is_file())
    if not gts:
        raise SemanticEvaluationError(f"{gt_dir}: no '*{gt_suffix}' ground-truth label found")
    acc = SemSegAccumulator(num_classes, ignore_index=ignore_index, reduce_zero_label=reduce_zero_label,
                            class_names=class_names)
    for g in gts:
        rel = g.relative_to(gt_dir).as_posix()[: -len(gt_suffix)]
        p = pred_dir / f"{rel}{pred_suffix}"
        if not p.is_file():
            raise SemanticEvaluationError(f"{g}: no prediction {p}")
        try:
            label, pred = load_label_png(g), load_label_png(p)
        except PanopticDataError as e:
            raise SemanticEvaluationError(str(e)) from None
        acc.update(pred, label, image_id=rel)
    return acc.compute()
