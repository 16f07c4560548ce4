"""``kmax prepare cityscapes``: Cityscapes ``gtFine`` -> panoptic train-id JSON/PNGs and
semantic train-id PNGs.

Input (``ROOT``, the folder holding the official downloads): ``gtFine/`` and
``leftImg8bit/`` from ``gtFine_trainvaltest.zip`` and ``leftImg8bit_trainvaltest.zip``
(extracted here first when only the archives are present). Output, as the tools of
cityscapesScripts 2.x write them:

* ``gtFine/cityscapes_panoptic_{split}_trainId.json`` + ``.../cityscapes_panoptic_{split}_trainId/``
  ``*_gtFine_panoptic.png``: exactly ``preparation/createPanopticImgs.py --use-train-id``
  (same JSON content, same PNG pixels; ``tests/test_prepare_cityscapes.py`` compares
  with its ``convert2panoptic``). Per ``*_gtFine_instanceIds.png`` segment id ``s``: the
  label is ``s // 1000`` for ``s >= 1000`` (an instance) and ``s`` otherwise (stuff, or
  a crowd region of a thing class: ``iscrowd = 1``); labels with ``ignoreInEval`` are
  left VOID; the PNG stores ``s`` as ``R + 256 G + 256² B``; ``category_id`` is the
  ``trainId``.
* ``gtFine/{split}/{city}/*_gtFine_labelTrainIds.png``: the train id of each pixel
  (255 = ignored), the file ``preparation/createTrainIdLabelImgs.py`` writes. That tool
  redraws the polygons; we map ``*_gtFine_labelIds.png`` (drawn from the same
  polygons in the same order by the same ``json2labelImg``) through ``id -> trainId``,
  which gives the same pixels without the polygon files.

The label table (ids, train ids, ``ignoreInEval``, ``hasInstances``, colours) is
cityscapesScripts' own ``helpers/labels.py``: install the ``[cityscapes]`` extra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from kmax_deeplab.data.prepare._common import (
    Journal,
    PrepareError,
    convert_all,
    extract_folder,
    save_png,
    valid_png,
    write_json,
)
from kmax_deeplab.panoptic_ids import id_to_rgb

__all__ = ["prepare_cityscapes", "cityscapes_labels", "CITYSCAPES_SPLITS"]

CITYSCAPES_SPLITS = ("train", "val", "test")
_ARCHIVES = (("gtFine", "gtFine_trainvaltest.zip"), ("leftImg8bit", "leftImg8bit_trainvaltest.zip"))


def cityscapes_labels():
    """cityscapesScripts' ``labels`` list (``helpers/labels.py``).

    Raises:
        PrepareError: cityscapesScripts is not installed.
    """
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError as exc:
        raise PrepareError("Cityscapes preparation needs cityscapesScripts: "
                           "pip install 'kmax-deeplab[cityscapes]'") from exc
    return labels


def _luts(use_train_id: bool):
    labels = cityscapes_labels()
    by_id = {lab.id: lab for lab in labels if lab.id >= 0}
    train_lut = np.full(256, 255, dtype=np.uint8)
    for lab in by_id.values():
        train_lut[lab.id] = 255 if lab.trainId < 0 else lab.trainId
    categories = [{"id": int(lab.trainId) if use_train_id else int(lab.id), "name": lab.name,
                   "color": lab.color, "supercategory": lab.category,
                   "isthing": 1 if lab.hasInstances else 0}
                  for lab in labels if not lab.ignoreInEval]
    return by_id, train_lut, categories


def convert_instance_ids(instance_ids: np.ndarray, by_id: dict, *, use_train_id: bool = True
                         ) -> tuple[np.ndarray, list[dict]]:
    """One ``*_gtFine_instanceIds.png`` -> panoptic RGB + ``segments_info`` (createPanopticImgs).

    Args:
        instance_ids: ``[H, W]`` integer ids (label id, or label id * 1000 + k).
        by_id: cityscapesScripts ``id2label``.
        use_train_id: ``category_id`` is the train id (else the label id).

    Returns:
        ``([H, W, 3] uint8 panoptic colours, segments_info)`` (bbox ``[x, y, w, h]`` of
        the segment's pixels, as createPanopticImgs; computed in one pass over the image).

    Raises:
        PrepareError: an id whose label is not in the label table.
    """
    from scipy import ndimage

    # Linear passes over the pixels (Cityscapes ids < 34000): pixel counts per id, a
    # dense segment index per pixel, bounding boxes.
    if instance_ids.size and instance_ids.min() < 0:
        raise PrepareError(f"negative segment id {int(instance_ids.min())}")
    counts = np.bincount(instance_ids.ravel())
    uniq = np.flatnonzero(counts)
    lut = np.zeros(len(counts), dtype=np.int32)
    lut[uniq] = np.arange(len(uniq), dtype=np.int32)
    inv = lut[instance_ids]
    areas = counts[uniq]
    boxes = ndimage.find_objects(inv + 1)
    keep = np.zeros(len(uniq), dtype=bool)
    segments = []
    for k, sid in enumerate(uniq.tolist()):
        label_id, crowd = (sid, 1) if sid < 1000 else (sid // 1000, 0)
        lab = by_id.get(label_id)
        if lab is None:
            raise PrepareError(f"segment id {sid}: label id {label_id} is not a Cityscapes label")
        if lab.ignoreInEval:
            continue
        if not lab.hasInstances:
            crowd = 0
        keep[k] = True
        ys, xs = boxes[k]
        segments.append({"id": int(sid), "category_id": int(lab.trainId if use_train_id else lab.id),
                         "area": int(areas[k]),
                         "bbox": [int(xs.start), int(ys.start), int(xs.stop - xs.start), int(ys.stop - ys.start)],
                         "iscrowd": crowd})
    pan = np.where(keep[inv], instance_ids, 0)
    return id_to_rgb(pan), segments


def prepare_cityscapes(root: str | os.PathLike, *, splits: Sequence[str] | None = None,
                       semantic: bool = True, progress: bool = True) -> dict:
    """Prepare a Cityscapes download for training and evaluation (see the module doc).

    Args:
        root: the folder with ``gtFine/`` and ``leftImg8bit/`` (or their zip archives).
        splits: subset of ``train``, ``val``, ``test`` (default: those present).
        semantic: also write ``*_gtFine_labelTrainIds.png``.
        progress: tqdm progress bars.

    Returns:
        ``{split: {"json": path, "images": n, "converted": n converted by this call,
        "semantic_written": n}}``.

    Raises:
        PrepareError: no ``gtFine/<split>`` folder, a missing ``*_labelIds.png``, an
            unreadable PNG or an unknown label id (the file is named).
    """
    root = Path(root)
    for folder, archive in _ARCHIVES:
        extract_folder(root / archive, folder, root, progress=progress)
    gt_root = root / "gtFine"
    if not gt_root.is_dir():
        raise PrepareError(f"{gt_root} not found: extract gtFine_trainvaltest.zip into {root}")
    if splits is None:
        splits = [s for s in CITYSCAPES_SPLITS if (gt_root / s).is_dir()]
        if not splits:
            raise PrepareError(f"{gt_root} has none of the folders {', '.join(CITYSCAPES_SPLITS)}")
    by_id, train_lut, categories = _luts(use_train_id=True)
    summary = {}
    for split in splits:
        split_dir = gt_root / split
        files = sorted(split_dir.glob("*/*_gtFine_instanceIds.png"))
        if not files:
            raise PrepareError(f"no *_gtFine_instanceIds.png under {split_dir}/*/")
        base = f"cityscapes_panoptic_{split}_trainId"
        out_json, pan_dir = gt_root / f"{base}.json", gt_root / base
        journal = Journal(out_json)

        def done(f: Path, rec: dict | None) -> bool:
            if not rec or not rec.get("image"):
                return False
            size = (rec["image"]["width"], rec["image"]["height"])
            sem = f.with_name(f.name.replace("_instanceIds.png", "_labelTrainIds.png"))
            return valid_png(pan_dir / rec["annotation"]["file_name"], size) and (
                not semantic or valid_png(sem, size))

        def convert(f: Path) -> dict:
            name = f.name
            image_id = name.replace("_gtFine_instanceIds.png", "")
            ids = _read(f)
            rgb, segments = convert_instance_ids(ids, by_id)
            png_name = name.replace("_instanceIds.png", "_panoptic.png")
            save_png(pan_dir / png_name, rgb)
            if semantic:
                label_file = f.with_name(name.replace("_instanceIds.png", "_labelIds.png"))
                label_ids = _read(label_file)
                if label_ids.shape != ids.shape or label_ids.max(initial=0) > 255:
                    raise PrepareError(f"{label_file}: not a label-id map of {ids.shape[1]}x{ids.shape[0]}")
                save_png(f.with_name(name.replace("_instanceIds.png", "_labelTrainIds.png")),
                         train_lut[label_ids])
            return {"image": {"id": image_id, "width": int(ids.shape[1]), "height": int(ids.shape[0]),
                              "file_name": name.replace("_instanceIds.png", "_leftImg8bit.png")},
                    "annotation": {"image_id": image_id, "file_name": png_name,
                                   "segments_info": segments}}

        records, converted = convert_all(files, key=lambda f: f.name.replace("_gtFine_instanceIds.png", ""),
                                         done=done, convert=convert, journal=journal,
                                         desc=f"cityscapes {split}", progress=progress)
        if converted or not out_json.is_file():
            write_json(out_json, {"images": [r["image"] for r in records],
                                  "annotations": [r["annotation"] for r in records],
                                  "categories": categories}, indent=4, sort_keys=True)
        journal.finish()
        summary[split] = {"json": str(out_json), "images": len(records), "converted": converted,
                          "semantic_written": converted if semantic else 0}
    return summary


def _read(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im)
    except (OSError, ValueError) as exc:
        raise PrepareError(f"cannot read {path}: {exc}") from exc
