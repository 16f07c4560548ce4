"""Mask AP of COCO instance results against a COCO instances JSON, with pycocotools' COCOeval.

The numbers are pycocotools' own (``COCOeval(gt, dt, "segm")``); this module only checks the
inputs first, so that a bad file fails with one line naming the annotation or result at fault
instead of a traceback from inside pycocotools.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CocoInstancesError", "evaluate_coco_instances", "STAT_NAMES"]

#: COCOeval ``stats`` for ``iouType="segm"``, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class CocoInstancesError(ValueError):
    """A COCO instances GT or results file is malformed (the message names the entry)."""


def _load(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CocoInstancesError(f"{path}: {what} file not found") from None
    except json.JSONDecodeError as e:
        raise CocoInstancesError(f"{path}: {what} is not valid JSON ({e})") from None


def _check_gt(gt: Any, path: str | Path) -> None:
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations", "categories")):
        raise CocoInstancesError(f"{path}: a COCO instances JSON needs 'images', 'annotations' and 'categories'")
    cats = {c["id"] for c in gt["categories"]}
    images = {im["id"] for im in gt["images"]}
    for i, ann in enumerate(gt["annotations"]):
        name = f"{path}: annotation {i} (id {ann.get('id')!r}, image {ann.get('image_id')!r})"
        for key in ("id", "image_id", "category_id", "segmentation", "area", "iscrowd"):
            if key not in ann:
                raise CocoInstancesError(f"{name} has no {key!r}")
        if ann["category_id"] not in cats:
            raise CocoInstancesError(f"{name}: unknown category_id {ann['category_id']!r}")
        if ann["image_id"] not in images:
            raise CocoInstancesError(f"{name}: image_id not in 'images'")


def _check_results(results: Any, gt: dict, path: str | Path) -> None:
    if not isinstance(results, list):
        raise CocoInstancesError(f"{path}: COCO results must be a JSON list")
    cats = {c["id"] for c in gt["categories"]}
    images = {im["id"] for im in gt["images"]}
    for i, r in enumerate(results):
        name = f"{path}: result {i} (image {r.get('image_id')!r})" if isinstance(r, dict) else f"{path}: result {i}"
        if not isinstance(r, dict):
            raise CocoInstancesError(f"{name} is not an object")
        for key in ("image_id", "category_id", "score", "segmentation"):
            if key not in r:
                raise CocoInstancesError(f"{name} has no {key!r}")
        if r["category_id"] not in cats:
            raise CocoInstancesError(f"{name}: unknown category_id {r['category_id']!r}")
        if r["image_id"] not in images:
            raise CocoInstancesError(f"{name}: image_id is not in the ground truth")


def evaluate_coco_instances(gt_json: str | Path, results_json: str | Path) -> dict[str, float]:
    """Mask AP / AR of ``results_json`` (COCO results with RLE masks) against ``gt_json``.

    Returns:
        ``{"AP", "AP50", ..., "ARl"}`` in percent, COCOeval's ``stats`` × 100.

    Raises:
        CocoInstancesError: a missing / malformed file, an annotation or result without a
            required key, with an unknown category or image (one line, naming it).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_data = _load(gt_json, "ground-truth")
    _check_gt(gt_data, gt_json)
    results = _load(results_json, "results")
    _check_results(results, gt_data, results_json)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) * 100 for name, v in zip(STAT_NAMES, ev.stats)}
