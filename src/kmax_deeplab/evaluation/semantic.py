"""Semantic metrics (mIoU, per-class IoU, pixel accuracy) from panoptic maps.

Each pixel's class is its segment's ``category_id``. GT VOID pixels (id 0 when not
listed) are ignored. A prediction VOID pixel on a labelled GT pixel counts as a miss
for that GT class (a false negative, never a false positive of another class). The
confusion matrix comes from the per-image segment intersection counts of
:func:`~kmax_deeplab.evaluation.pairing.pair_segments`, so no extra pass over pixels.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from kmax_deeplab.evaluation.errors import PanopticEvaluationError
from kmax_deeplab.evaluation.pairing import SegmentPairing, pair_segments
from kmax_deeplab.evaluation.panoptic_io import categories_by_id

__all__ = ["SemanticAccumulator"]


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
