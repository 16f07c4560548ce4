"""Panoptic quality (PQ, SQ, RQ) with exactly the semantics of the official
panopticapi ``evaluation.py`` (cocodataset/panopticapi; Kirillov et al., CVPR 2019),
which cityscapesScripts' ``evalPanopticSemanticLabeling.py`` copies verbatim.

Rules (spec: landscape.md §4), per image:

* A (GT, prediction) pair matches when both have the same category, the GT is not
  crowd and IoU > 0.5 (strict). The union leaves out the prediction's pixels on GT
  id 0 (VOID): ``union = |p| + |g| - |p∩g| - |p∩VOID|``. ``|g|`` is the GT JSON
  ``area`` when given (as panopticapi), the PNG count otherwise.
* FN: unmatched non-crowd GT. Crowd GT is never a FN.
* FP: unmatched prediction, unless ``(|p∩VOID| + |p∩crowd|) / |p| > 0.5`` where
  ``crowd`` is the *last* crowd segment of the prediction's category in the GT
  ``segments_info`` (panopticapi remembers one crowd segment per category).
* Predicted id 0 is VOID unless the prediction lists it in ``segments_info``, in
  which case it is an ordinary segment; GT id 0 always counts as VOID in the union
  and FP rules (and is also a segment if the GT lists it).

Per class ``PQ = ΣIoU / (TP + FP/2 + FN/2)``, ``SQ = ΣIoU / TP``, ``RQ = TP / (TP +
FP/2 + FN/2)``; All/Things/Stuff average the classes with TP + FP + FN > 0.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from kmax_deeplab.evaluation.errors import PanopticEvaluationError
from kmax_deeplab.evaluation.exact_sum import add_exact, exact_value
from kmax_deeplab.evaluation.pairing import SegmentPairing, pair_segments
from kmax_deeplab.evaluation.panoptic_io import categories_by_id

__all__ = ["PanopticQualityAccumulator", "pq_average", "pq_compute"]


class PanopticQualityAccumulator:
    """In-memory PQ statistics, fed one image at a time; mergeable and picklable.

    Args:
        categories: COCO-panoptic category dicts (``id``, ``isthing``, optional
            ``name``) or ``{id: category}``; their order is the per-class order.

    Example:
        >>> acc = PanopticQualityAccumulator(categories)  # doctest: +SKIP
        >>> acc.update(gt_png_ids, gt_segments_info, pred_png_ids, pred_segments_info)
        >>> acc.compute()["All"]["pq"]
    """

    def __init__(self, categories: Sequence[dict] | Mapping[int, dict]):
        self.categories = categories_by_id(categories)
        self._cat_index = {cid: i for i, cid in enumerate(self.categories)}
        k = len(self.categories)
        self.tp = np.zeros(k, dtype=np.int64)
        self.fp = np.zeros(k, dtype=np.int64)
        self.fn = np.zeros(k, dtype=np.int64)
        self.iou_partials: list[list[float]] = [[] for _ in range(k)]
        self.num_images = 0

    # ------------------------------------------------------------------ update
    def update(
        self,
        gt_panoptic: np.ndarray,
        gt_segments_info: Sequence[dict],
        pred_panoptic: np.ndarray,
        pred_segments_info: Sequence[dict],
        *,
        image_id: Any = None,
    ) -> None:
        """Add one image.

        Args:
            gt_panoptic: ``[H, W]`` integer GT segment ids (decode PNGs with
                :func:`~kmax_deeplab.panoptic_ids.rgb_to_id`).
            gt_segments_info: GT segments (``id``, ``category_id``, ``iscrowd``,
                optional ``area``).
            pred_panoptic: ``[H, W]`` integer predicted segment ids.
            pred_segments_info: predicted segments (``id``, ``category_id``).
            image_id: used in error messages only.

        Raises:
            PanopticEvaluationError: inconsistent input (see :func:`pair_segments`)
                or an unknown ``category_id``.
        """
        pairing = pair_segments(gt_panoptic, gt_segments_info, pred_panoptic, pred_segments_info,
                                image_id=image_id)
        self.update_from_pairing(pairing, image_id=image_id)

    def update_from_pairing(self, pairing: SegmentPairing, *, image_id: Any = None) -> None:
        """Add one image from a precomputed :class:`SegmentPairing`."""
        counts = pairing.counts
        gts, preds = pairing.gt_segments, pairing.pred_segments
        ng, npred = len(gts), len(preds)
        gt_cat = self._category_indices(gts, "ground-truth", image_id)
        pred_cat = self._category_indices(preds, "predicted", image_id)
        try:
            gt_crowd = np.array([int(s.get("iscrowd", 0)) == 1 for s in gts], dtype=bool)
        except (TypeError, ValueError) as exc:
            raise PanopticEvaluationError(f"image {image_id!r}: bad 'iscrowd' value: {exc}") from exc
        png_gt_area = counts.sum(axis=1)[1 : ng + 1]
        gt_area = np.array([s["area"] if "area" in s else png_gt_area[i] for i, s in enumerate(gts)],
                           dtype=np.int64).reshape(ng)
        pred_area = counts.sum(axis=0)[1 : npred + 1]
        inter = counts[1 : ng + 1, 1 : npred + 1]  # [ng, npred]
        void_inter = counts[pairing.gt_void_row, 1 : npred + 1]  # [npred]

        # Candidate pairs: overlapping, same category, non-crowd GT.
        cand = (inter > 0) & (gt_cat[:, None] == pred_cat[None, :]) & ~gt_crowd[:, None]
        gi, pj = np.nonzero(cand)
        i_pair = inter[gi, pj]
        union = pred_area[pj] + gt_area[gi] - i_pair - void_inter[pj]
        iou = i_pair / union  # int64 / int64 -> float64, as panopticapi
        hit = iou > 0.5
        gi, pj, iou = gi[hit], pj[hit], iou[hit]
        k = len(self.categories)
        self.tp += np.bincount(gt_cat[gi], minlength=k)
        for c, v in zip(gt_cat[gi].tolist(), iou.tolist()):
            add_exact(self.iou_partials[c], (v,))
        gt_matched = np.zeros(ng, dtype=bool)
        gt_matched[gi] = True
        pred_matched = np.zeros(npred, dtype=bool)
        pred_matched[pj] = True

        # FN: unmatched non-crowd GT; remember the last crowd GT row per category.
        fn_mask = ~gt_matched & ~gt_crowd
        self.fn += np.bincount(gt_cat[fn_mask], minlength=k)
        crowd_row = {}
        for i in np.flatnonzero(gt_crowd & ~gt_matched).tolist():
            crowd_row[int(gt_cat[i])] = i + 1

        # FP: unmatched predictions not mostly on VOID or same-class crowd.
        for j in np.flatnonzero(~pred_matched).tolist():
            c = int(pred_cat[j])
            ignored = int(void_inter[j])
            if c in crowd_row:
                ignored += int(counts[crowd_row[c], j + 1])
            if ignored / int(pred_area[j]) > 0.5:
                continue
            self.fp[c] += 1
        self.num_images += 1

    def _category_indices(self, segments: list, what: str, image_id: Any) -> np.ndarray:
        out = np.empty(len(segments), dtype=np.int64)
        for i, s in enumerate(segments):
            try:
                out[i] = self._cat_index[s["category_id"]]
            except (KeyError, TypeError):
                raise PanopticEvaluationError(
                    f"image {image_id!r}: {what} segment {s['id']} has unknown category_id "
                    f"{s['category_id']!r}") from None
        return out

    # ------------------------------------------------------------------ merge / state
    def merge(self, other: "PanopticQualityAccumulator") -> "PanopticQualityAccumulator":
        """Add ``other``'s statistics into ``self`` (same categories); returns self."""
        if list(other.categories) != list(self.categories):
            raise ValueError("cannot merge PQ accumulators with different categories")
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        for mine, theirs in zip(self.iou_partials, other.iou_partials):
            add_exact(mine, theirs)
        self.num_images += other.num_images
        return self

    def state_dict(self) -> dict:
        """Plain picklable state (e.g. for ``torch.distributed.all_gather_object``)."""
        return {
            "category_ids": list(self.categories),
            "tp": self.tp.tolist(),
            "fp": self.fp.tolist(),
            "fn": self.fn.tolist(),
            "iou_partials": [list(p) for p in self.iou_partials],
            "num_images": self.num_images,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Replace the statistics by ``state`` (from :meth:`state_dict`, same categories)."""
        if list(state["category_ids"]) != list(self.categories):
            raise ValueError("state_dict was made with different categories")
        self.tp = np.asarray(state["tp"], dtype=np.int64).copy()
        self.fp = np.asarray(state["fp"], dtype=np.int64).copy()
        self.fn = np.asarray(state["fn"], dtype=np.int64).copy()
        self.iou_partials = [list(p) for p in state["iou_partials"]]
        self.num_images = int(state["num_images"])

    def merge_state_dict(self, state: Mapping) -> None:
        """Add the statistics of a :meth:`state_dict` (e.g. from another rank)."""
        other = PanopticQualityAccumulator(self.categories)
        other.load_state_dict(state)
        self.merge(other)

    # ------------------------------------------------------------------ results
    def per_class_stats(self) -> dict[int, dict]:
        """``{category_id: {"tp", "fp", "fn", "iou"}}`` with the exact IoU sums."""
        return {
            cid: {"tp": int(self.tp[i]), "fp": int(self.fp[i]), "fn": int(self.fn[i]),
                  "iou": exact_value(self.iou_partials[i])}
            for i, cid in enumerate(self.categories)
        }

    def compute(self) -> dict:
        """Return panopticapi's result layout plus counts.

        Returns:
            ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {cat_id:
            {"pq", "sq", "rq", "tp", "fp", "fn", "iou"}}}``; values are fractions (not
            percent). A group with no class (n = 0) reports 0.0 where panopticapi
            divides by zero.
        """
        return pq_average(self.per_class_stats(), self.categories)


def pq_average(stats: Mapping[int, Mapping], categories: Mapping[int, dict]) -> dict:
    """All/Things/Stuff and per-class PQ from per-class ``tp, fp, fn, iou`` sums.

    The arithmetic follows panopticapi ``PQStat.pq_average`` operation for operation
    (same order of classes, same float expressions).
    """
    results: dict = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for cid, cat in categories.items():
            if isthing is not None and (cat["isthing"] == 1) != isthing:
                continue
            st = stats[cid]
            iou, tp, fp, fn = st["iou"], st["tp"], st["fp"], st["fn"]
            counts = {"tp": tp, "fp": fp, "fn": fn, "iou": iou}
            if tp + fp + fn == 0:
                per_class[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, **counts}
                continue
            n += 1
            denom = tp + 0.5 * fp + 0.5 * fn
            pq_c = iou / denom
            sq_c = iou / tp if tp != 0 else 0.0
            rq_c = tp / denom
            per_class[cid] = {"pq": pq_c, "sq": sq_c, "rq": rq_c, **counts}
            pq += pq_c
            sq += sq_c
            rq += rq_c
        if n:
            results[name] = {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}
        else:
            results[name] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
        if name == "All":
            results["per_class"] = per_class
    return results


def pq_compute(
    gt_json_file: str | os.PathLike,
    pred_json_file: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
    *,
    categories: Sequence[dict] | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    backend: str = "hotcoco",
) -> dict:
    """File-based PQ with panopticapi's signature and result layout.

    Args:
        gt_json_file: COCO-panoptic GT JSON (``annotations``; ``categories`` unless
            ``categories`` is given).
        pred_json_file: prediction JSON (``annotations`` with ``image_id``,
            ``file_name``, ``segments_info``).
        gt_folder, pred_folder: PNG folders; default: the JSON path without ``.json``.
        categories: overrides the GT JSON's categories.
        num_workers: processes (default: all CPUs; ``0``/``1``: in this process).
        progress: show a tqdm progress bar (``kmax`` backend).
        backend: ``"hotcoco"`` (default; falls back to ours where hotcoco is missing
            or differs, see :mod:`~kmax_deeplab.evaluation.hotcoco_backend`) or
            ``"kmax"`` (ours, the reference).

    Returns:
        See :meth:`PanopticQualityAccumulator.compute`.

    Raises:
        PanopticEvaluationError: bad input (missing prediction, inconsistent PNG/JSON,
            unknown category, size mismatch, unreadable file).
    """
    from kmax_deeplab.evaluation.runner import evaluate_files  # runner imports this module

    out = evaluate_files(gt_json_file, pred_json_file, gt_folder, pred_folder,
                         categories=categories, num_workers=num_workers, progress=progress,
                         backend=backend)
    return out["panoptic"]
