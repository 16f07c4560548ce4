"""File-based PQ through hotcoco (Rust, MIT; github.com/derekallman/hotcoco), the
default backend of :func:`~kmax_deeplab.evaluation.evaluate_files` for PQ alone.

hotcoco's ``panoptic.PanopticEval`` implements panopticapi's ``pq_compute`` (same
matching, crowd and VOID rules) and reads the PNGs in Rust, several times faster than
our Python file path (``docs/benchmarks.md``). It returns per-class ``tp``, ``fp``,
``fn`` and IoU sums, from which :func:`~kmax_deeplab.evaluation.pq_average` rebuilds
our result layout with panopticapi's arithmetic, so both backends report the same
dict.

Where hotcoco and ours differ, the input goes to ours (``backend="kmax"``, the
reference), which :func:`hotcoco_unsupported_reason` decides before any PNG is read:

* ground truth whose ``segments_info`` lists id 0: panopticapi counts such a segment
  both as VOID and as a segment (zero-area unions); hotcoco follows panopticapi or
  raises "IoU is not a number"; ours rejects it with one clear error;
* a category without ``isthing``: hotcoco evaluates it ("extension" provenance, the
  Things/Stuff split is not panopticapi's); ours rejects it;
* a hotcoco result whose ``provenance()`` is not ``"parity_verified"``;
* anything hotcoco raises on (unreadable PNG, unknown category, id missing from
  ``segments_info``...): ours re-evaluates and raises its own one-line
  :class:`~kmax_deeplab.evaluation.PanopticEvaluationError`.

Every other case of the randomised parity test against panopticapi (crowd, VOID,
predicted id 0 as a real segment, repeated crowd segments of one class, merges,
splits, shifts) gives identical counts and IoU sums to 1e-12
(``tests/test_eval_hotcoco.py``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

__all__ = ["hotcoco_available", "hotcoco_unsupported_reason", "hotcoco_pq_stats"]


def hotcoco_available() -> bool:
    """Whether ``hotcoco.panoptic`` imports (it is a core dependency; a ``--no-deps``
    install may lack it)."""
    try:
        import hotcoco.panoptic  # noqa: F401
    except ImportError:
        return False
    return True


def hotcoco_unsupported_reason(gt_json: Mapping[str, Any], categories: Sequence[dict]) -> str | None:
    """Why hotcoco must not evaluate this input (``None``: it may).

    Args:
        gt_json: the ground-truth COCO-panoptic JSON (``annotations``).
        categories: the categories of the evaluation.
    """
    for cat in categories:
        if "isthing" not in cat:
            return f"category {cat.get('id')!r} has no 'isthing'"
    for ann in gt_json["annotations"]:
        for s in ann.get("segments_info", ()):
            if s.get("id") == 0:
                return f"ground truth of image {ann.get('image_id')!r} lists segment id 0"
    return None


def hotcoco_pq_stats(
    gt_json: Mapping[str, Any],
    pred_json: Mapping[str, Any],
    gt_folder: str | os.PathLike,
    pred_folder: str | os.PathLike,
    categories: Sequence[dict],
) -> dict[int, dict] | None:
    """Per-class PQ statistics of a file set, computed by hotcoco.

    Args:
        gt_json, pred_json: loaded COCO-panoptic JSONs (already matched by
            :func:`~kmax_deeplab.evaluation.panoptic_io.match_annotations`).
        gt_folder, pred_folder: the PNG folders.
        categories: the categories (replace the GT JSON's, which may have none).

    Returns:
        ``{category_id: {"tp", "fp", "fn", "iou"}}`` for every category, or ``None``
        when hotcoco rejects the input or reports a result that is not panopticapi's:
        the caller then evaluates with ours, whose error messages (naming the file,
        image and segment) are the library's.
    """
    from hotcoco.panoptic import PanopticEval

    # hotcoco wants integer image ids (Cityscapes' are strings): number the pairs.
    gt = {"annotations": [dict(a, image_id=k) for k, a in enumerate(gt_json["annotations"])],
          "categories": list(categories)}
    pred = {"annotations": [dict(a, image_id=k) for k, a in enumerate(pred_json["annotations"])]}
    try:
        ev = PanopticEval(gt, pred, gt_folder=os.fspath(gt_folder), pred_folder=os.fspath(pred_folder))
        ev.evaluate()
        if ev.provenance() != "parity_verified":
            return None
        per_class = ev.results()["per_class"]
    except Exception:  # noqa: BLE001  any rejection: ours evaluates and reports
        return None
    by_id = {str(k): v for k, v in per_class.items()}
    out = {}
    for cat in categories:
        r = by_id.get(str(cat["id"]), {})
        out[cat["id"]] = {"tp": int(r.get("tp", 0)), "fp": int(r.get("fp", 0)),
                          "fn": int(r.get("fn", 0)), "iou": float(r.get("iou", 0.0))}
    return out
