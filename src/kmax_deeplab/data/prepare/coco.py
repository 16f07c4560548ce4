"""``kmax prepare coco``: COCO panoptic -> semantic PNGs (133 classes) and instance
annotations.

Input: ``ROOT/annotations/panoptic_{split}.json`` + ``ROOT/annotations/panoptic_{split}/``
(``panoptic_annotations_trainval2017.zip`` with its inner PNG zips extracted).

* ``ROOT/panoptic_semseg_{split}/*.png``: the rule of Mask2Former's
  ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py`` (detectron2
  ``prepare_panoptic_fpn.py`` with all 133 classes kept apart): start from 255 (void),
  then every listed segment, crowd included, gets the contiguous index of its category
  in the category list (the catalog's 133 COCO-panoptic categories: things first).
* Instance annotations (for instance training and AP): ``annotations/instances_{split}.json``
  is used when present; otherwise ``annotations/instances_{split}_from_panoptic.json`` is
  derived with the rule of panopticapi's ``converters/panoptic2detection_coco_format.py
  --things_only``: one annotation per thing segment (its ``category_id``, ``area``,
  ``bbox``, ``iscrowd`` from the panoptic JSON; an RLE ``segmentation`` of its pixels),
  ids numbered from 1, categories the thing categories (no ``isthing``/``color``).
  The official ``instances_*.json`` has polygon masks and slightly different areas:
  the derived file is for training and self-consistent evaluation, not for official AP.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from kmax_deeplab.data.prepare._common import (
    Journal,
    PrepareError,
    convert_all,
    save_png,
    valid_png,
    write_json,
)

__all__ = ["prepare_coco", "panoptic_to_semantic", "panoptic_to_instances"]


def panoptic_to_semantic(ids: np.ndarray, segments_info: Sequence[dict], contiguous: dict[int, int]) -> np.ndarray:
    """``[H, W]`` panoptic ids -> ``[H, W]`` uint8 contiguous class (255 = void).

    Raises:
        KeyError: a ``category_id`` not in ``contiguous``.
    """
    out = np.full(ids.shape, 255, dtype=np.uint8)
    for s in segments_info:
        out[ids == s["id"]] = contiguous[s["category_id"]]
    return out


def panoptic_to_instances(ids: np.ndarray, annotation: dict, things: set[int]) -> list[dict]:
    """The thing segments of one panoptic annotation as COCO detection annotations (no ``id``)."""
    from pycocotools import mask as mask_utils

    out = []
    for s in annotation["segments_info"]:
        if s["category_id"] not in things:
            continue
        m = np.asfortranarray((ids == s["id"]).astype(np.uint8)[:, :, None])
        rle = mask_utils.encode(m)[0]
        rle["counts"] = rle["counts"].decode("utf8")
        ann = {k: v for k, v in s.items() if k != "id"}
        ann.update(image_id=annotation["image_id"], segmentation=rle)
        out.append(ann)
    return out


def prepare_coco(root: str | os.PathLike, *, splits: Sequence[str] | None = None,
                 semantic: bool = True, instances: bool = True, progress: bool = True) -> dict:
    """Prepare COCO panoptic for semantic and instance use (see the module doc).

    Args:
        root: the COCO folder (``annotations/panoptic_{split}.json`` + PNG folder).
        splits: e.g. ``("train2017", "val2017")`` (default: every ``panoptic_*.json``).
        semantic: write ``panoptic_semseg_{split}/``.
        instances: check for ``instances_{split}.json``, else derive one.
        progress: tqdm progress bars.

    Returns:
        ``{split: {"images": n, "converted": n, "instances": path, "instances_derived": bool}}``.

    Raises:
        PrepareError: missing or malformed files (named).
    """
    from kmax_deeplab.data.catalog import get_dataset_meta
    from kmax_deeplab.data.image_io import PanopticDataError, load_panoptic_png

    root = Path(root)
    ann_dir = root / "annotations"
    if splits is None:
        splits = sorted(p.stem[len("panoptic_"):] for p in ann_dir.glob("panoptic_*.json"))
        if not splits:
            raise PrepareError(f"no annotations/panoptic_*.json under {root}")
    meta = get_dataset_meta("coco")
    contiguous = dict(meta.category_id_to_train_id)
    things = {c["id"] for c in meta.categories if c["isthing"]}
    summary = {}
    for split in splits:
        pan_json = ann_dir / f"panoptic_{split}.json"
        pan_dir = ann_dir / f"panoptic_{split}"
        try:
            data = json.loads(pan_json.read_text(encoding="utf-8"))
            anns = data["annotations"]
        except (OSError, ValueError, KeyError) as exc:
            raise PrepareError(f"cannot read COCO panoptic JSON {pan_json}: {exc}") from exc
        if not pan_dir.is_dir():
            raise PrepareError(f"{pan_dir} not found: extract panoptic_{split}.zip into {ann_dir}")
        sizes = {img["id"]: (img["width"], img["height"]) for img in data.get("images", [])}
        sem_dir = root / f"panoptic_semseg_{split}"
        inst_path = ann_dir / f"instances_{split}.json"
        derived_path = ann_dir / f"instances_{split}_from_panoptic.json"
        have = next((p for p in (inst_path, derived_path) if p.is_file()), None)
        derive = instances and have is None
        # No JSON of its own: the journal keeps the derived instances until the end.
        journal = Journal(sem_dir / ".instances.json")

        def done(ann: dict, rec: dict | None) -> bool:
            if derive and (not rec or "instances" not in rec):
                return False  # the instances of this image are not stored yet
            return not semantic or valid_png(sem_dir / ann["file_name"], sizes.get(ann["image_id"]))

        def convert(ann: dict) -> dict:
            try:
                ids = load_panoptic_png(pan_dir / ann["file_name"])
            except PanopticDataError as exc:
                raise PrepareError(str(exc)) from exc
            rec = {"image": {"id": ann["image_id"]}, "annotation": {"image_id": ann["image_id"]}}
            if semantic:
                try:
                    sem = panoptic_to_semantic(ids, ann["segments_info"], contiguous)
                except KeyError as exc:
                    raise PrepareError(f"{pan_json}: image {ann['image_id']!r} has category_id "
                                       f"{exc.args[0]} outside the 133 COCO-panoptic categories") from None
                save_png(sem_dir / ann["file_name"], sem)
            if derive:
                rec["instances"] = panoptic_to_instances(ids, ann, things)
            return rec

        records, converted = convert_all(anns, key=lambda a: a["image_id"], done=done,
                                         convert=convert, journal=journal, desc=f"coco {split}",
                                         progress=progress)
        if derive:
            inst = [a for r in records for a in r["instances"]]
            for k, a in enumerate(inst):
                a["id"] = k + 1
            cats = [{k: v for k, v in c.items() if k not in ("isthing", "color")}
                    for c in data.get("categories", meta.categories) if c["id"] in things]
            out = {k: v for k, v in data.items() if k not in ("annotations", "categories")}
            out.update(annotations=inst, categories=cats)
            write_json(derived_path, out)
        journal.finish()
        summary[split] = {"images": len(records), "converted": converted,
                          "instances": str(have or derived_path) if instances else None,
                          "instances_derived": derive}
    return summary

