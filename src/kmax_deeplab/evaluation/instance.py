"""COCO-style instance segmentation AP (``iouType="segm"``, pycocotools) from the
thing segments of panoptic GT and predictions.

Every GT thing segment becomes a COCO annotation (``iscrowd`` kept, ``area`` = pixel
count) and every predicted thing segment a detection scored by its ``score``; masks
are RLE-encoded with ``pycocotools.mask``. This is the AP that mask-transformer papers
report next to PQ (e.g. kMaX-DeepLab's Cityscapes AP column) when computed from the
panoptic output; note that the official Cityscapes instance benchmark
(``evalInstanceLevelSemanticLabeling``) uses its own matching, which this does not
replicate: for that number use :mod:`~kmax_deeplab.evaluation.cityscapes_official`
(``kmax evaluate --dataset cityscapes --instance``), which runs cityscapesScripts.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping, Sequence

import numpy as np

from kmax_deeplab.evaluation.errors import PanopticEvaluationError
from kmax_deeplab.evaluation.pairing import SegmentPairing, pair_segments
from kmax_deeplab.evaluation.panoptic_io import categories_by_id

__all__ = ["InstanceAPAccumulator"]

_STAT_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def _encode(index: np.ndarray, rows: list[int]) -> list[dict]:
    from pycocotools import mask as mask_utils

    if not rows:
        return []
    # [H, W] dense index -> [H, W, N] Fortran-ordered uint8 masks for pycocotools.
    masks = np.asfortranarray(np.stack([index == r for r in rows], axis=-1).astype(np.uint8))
    rles = mask_utils.encode(masks)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


class InstanceAPAccumulator:
    """Collects RLE-encoded thing segments image by image; mergeable and picklable.

    Args:
        categories: category dicts (``id``, ``isthing``) or ``{id: category}``; only
            thing categories take part.
    """

    def __init__(self, categories: Sequence[dict] | Mapping[int, dict]):
        self.categories = categories_by_id(categories)
        self.things = {cid for cid, c in self.categories.items() if c["isthing"] == 1}
        self.images: list[dict] = []  # {"key", "height", "width"}
        self.gt: list[dict] = []
        self.dt: list[dict] = []

    def update(self, gt_panoptic: np.ndarray, gt_segments_info: Sequence[dict],
               pred_panoptic: np.ndarray, pred_segments_info: Sequence[dict], *,
               image_id: Any = None) -> None:
        """Add one image (arguments as in ``PanopticQualityAccumulator.update``;
        every predicted thing segment needs a ``score``)."""
        pairing = pair_segments(gt_panoptic, gt_segments_info, pred_panoptic, pred_segments_info,
                                image_id=image_id, keep_maps=True)
        self.update_from_pairing(pairing, image_id=image_id)

    def update_from_pairing(self, pairing: SegmentPairing, *, image_id: Any = None) -> None:
        """Add one image from a :class:`SegmentPairing` made with ``keep_maps=True``."""
        if pairing.gt_index is None or pairing.pred_index is None:
            raise ValueError("instance AP needs a SegmentPairing made with keep_maps=True")
        key = len(self.images) if image_id is None else image_id
        h, w = pairing.gt_index.shape
        self.images.append({"key": key, "height": int(h), "width": int(w)})
        gt_rows = [i + 1 for i, s in enumerate(pairing.gt_segments) if s["category_id"] in self.things]
        for r, rle in zip(gt_rows, _encode(pairing.gt_index, gt_rows)):
            s = pairing.gt_segments[r - 1]
            self.gt.append({"key": key, "category_id": s["category_id"], "segmentation": rle,
                            "iscrowd": int(s.get("iscrowd", 0)),
                            "area": float(pairing.counts[r].sum())})
        dt_rows = []
        for j, s in enumerate(pairing.pred_segments):
            if s["category_id"] not in self.things:
                continue
            if "score" not in s:
                raise PanopticEvaluationError(
                    f"image {image_id!r}: predicted thing segment {s['id']} has no 'score' (needed for AP)")
            dt_rows.append(j + 1)
        for r, rle in zip(dt_rows, _encode(pairing.pred_index, dt_rows)):
            s = pairing.pred_segments[r - 1]
            self.dt.append({"key": key, "category_id": s["category_id"], "segmentation": rle,
                            "score": float(s["score"])})

    def merge(self, other: "InstanceAPAccumulator") -> "InstanceAPAccumulator":
        """Append ``other``'s images and segments; returns self."""
        self.images += other.images
        self.gt += other.gt
        self.dt += other.dt
        return self

    def state_dict(self) -> dict:
        """Picklable state."""
        return {"images": list(self.images), "gt": list(self.gt), "dt": list(self.dt)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore from :meth:`state_dict`."""
        self.images, self.gt, self.dt = list(state["images"]), list(state["gt"]), list(state["dt"])

    def compute(self) -> dict:
        """Run pycocotools ``COCOeval(iouType="segm")``.

        Returns:
            ``{"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"}`` as fractions;
            ``None`` where pycocotools reports -1 (no GT for that range).
        """
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        keys = {}
        for im in self.images:
            keys.setdefault(im["key"], (len(keys) + 1, im))
        cats = [{"id": cid, "name": str(self.categories[cid].get("name", cid))} for cid in sorted(self.things)]
        gt = COCO()
        gt.dataset = {
            "images": [{"id": i, "height": im["height"], "width": im["width"]} for i, im in keys.values()],
            "annotations": [dict(a, id=n + 1, image_id=keys[a["key"]][0]) for n, a in enumerate(self.gt)],
            "categories": cats,
        }
        for a in gt.dataset["annotations"]:
            del a["key"]
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            if not self.dt:
                return {name: 0.0 if self.gt else None for name in _STAT_NAMES}
            dets = [dict(d, image_id=keys[d["key"]][0]) for d in self.dt]
            for d in dets:
                del d["key"]
            dt = gt.loadRes(dets)
            ev = COCOeval(gt, dt, iouType="segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {name: (None if v < 0 else float(v)) for name, v in zip(_STAT_NAMES, ev.stats[:6])}
