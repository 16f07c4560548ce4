"""``kmax prepare ade20k``: ADEChallengeData2016 (+ the instance annotations) -> ADE20K
panoptic (150 classes, 100 things) and the ``reduce_zero_label`` semantic maps.

Input: ``ROOT/ADEChallengeData2016`` (or ``ROOT`` itself; extracted first from
``ROOT/ADEChallengeData2016.zip`` and ``annotations_instance.tar`` in either folder when
only the archives are there) with ``images/{training,
validation}/*.jpg``, ``annotations/{training,validation}/*.png`` (SceneParse150 class + 1;
0 = "other") and ``annotations_instance/{training,validation}/*.png`` (the instance
archive ``annotations_instance.tar`` of sceneparsing.csail.mit.edu that Mask2Former
uses: R = instance class + 1 of the 100-class instance set, G = instance index, 0 = none).

Output, in the layout of Mask2Former's ``datasets/prepare_ade20k_pan_seg.py`` and
``prepare_ade20k_sem_seg.py`` (facebookresearch/Mask2Former, MIT), which the presets read:

* ``ade20k_panoptic_{train,val}.json`` + ``ade20k_panoptic_{train,val}/*.png``: per image,
  first one stuff segment per stuff class of the semantic map, then one thing segment
  per instance index of the instance map, its class mapped from the instance set to the
  150 classes (``ADE20K_INSTANCE_TO_SEMANTIC``, Mask2Former's
  ``ade20k_instance_catid_mapping.txt``); things are pasted over stuff (the two
  annotations overlap a little); thing-class pixels without an instance stay VOID.
  Categories: the catalog's ``ade20k_panoptic_categories.json`` (ids 0..149).
  Two deliberate differences from Mask2Former: segment ids are deterministic
  (``category_id + 1`` for stuff, ``(category_id + 1) * 1000 + k`` for the k-th
  instance) where Mask2Former draws random colours (``panopticapi.IdGenerator``); and
  a stuff segment's ``area``/``bbox`` count its pixels after the things are pasted
  (Mask2Former keeps the pre-overlap count, and lists a stuff segment even when things
  cover all of it, which the panoptic readers then reject).
* ``annotations_detectron2/{training,validation}/*.png``: ``class - 1`` with 0 -> 255
  (``reduce_zero_label``: uint8 wrap-around, as ``prepare_ade20k_sem_seg.py``).
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
    bbox_of,
    convert_all,
    extract_folder,
    save_png,
    valid_png,
    write_json,
)
from kmax_deeplab.panoptic_ids import id_to_rgb

__all__ = ["prepare_ade20k", "ADE20K_INSTANCE_TO_SEMANTIC", "ADE20K_SPLITS", "convert_ade20k_image"]

ADE20K_SPLITS = (("train", "training"), ("val", "validation"))

# Instance class i (0-based, of the 100 of annotations_instance) -> SceneParse150 class
# (0-based): Mask2Former datasets/ade20k_instance_catid_mapping.txt, columns 1-2 minus 1
# (its rows 5 and 18, 57 repeat one pair with two full-ADE20K ids; one entry each here).
ADE20K_INSTANCE_TO_SEMANTIC = (
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37,
    38, 39, 41, 42, 43, 44, 45, 47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67,
    69, 70, 71, 72, 73, 74, 75, 76, 78, 80, 81, 82, 83, 85, 86, 87, 88, 89, 90, 92,
    93, 95, 97, 98, 102, 103, 104, 107, 108, 110, 111, 112, 115, 116, 118, 119, 120, 121, 123, 124,
    125, 126, 127, 129, 130, 132, 133, 134, 135, 136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149,
)


def _categories() -> list[dict]:
    from kmax_deeplab.data.catalog import get_dataset_meta

    return [dict(c) for c in get_dataset_meta("ade20k").categories]


def convert_ade20k_image(semantic: np.ndarray, instance: np.ndarray, categories: Sequence[dict]
                         ) -> tuple[np.ndarray, list[dict]]:
    """One image's ADE20K annotations -> panoptic colours + ``segments_info``.

    Args:
        semantic: ``[H, W]`` uint8, class + 1 (0 = other).
        instance: ``[H, W, 3]`` uint8, R = instance class + 1, G = instance index (0 = none).
        categories: the 150 categories (``id``, ``isthing``) in id order.

    Returns:
        ``([H, W, 3] uint8, segments_info)`` (see the module doc for the ids).

    Raises:
        ValueError: shapes differ, a class > 150, an instance with several or no
            instance classes.
    """
    if semantic.shape != instance.shape[:2]:
        raise ValueError(f"semantic map {semantic.shape} and instance map {instance.shape[:2]} differ in size")
    isthing = {c["id"]: c["isthing"] for c in categories}
    pan = np.zeros(semantic.shape, dtype=np.int64)
    order = []  # (segment id, category id, iscrowd)
    cat = semantic.astype(np.int64) - 1  # -1: other
    if cat.max(initial=-1) >= len(categories):
        raise ValueError(f"semantic class {int(cat.max()) + 1} > {len(categories)}")
    for c in np.unique(cat).tolist():
        if c < 0 or isthing[c]:
            continue
        pan[cat == c] = c + 1
        order.append((c + 1, c))
    inst_idx = instance[..., 1]
    inst_cls = instance[..., 0].astype(np.int64) - 1
    count: dict[int, int] = {}
    for k in np.unique(inst_idx).tolist():
        if k == 0:
            continue
        m = inst_idx == k
        cls = np.unique(inst_cls[m])
        if len(cls) != 1 or not 0 <= cls[0] < len(ADE20K_INSTANCE_TO_SEMANTIC):
            raise ValueError(f"instance {k} has instance class(es) {(cls + 1).tolist()}; expected one of 1..100")
        c = ADE20K_INSTANCE_TO_SEMANTIC[int(cls[0])]
        count[c] = count.get(c, 0) + 1
        sid = (c + 1) * 1000 + count[c]
        pan[m] = sid
        order.append((sid, c))
    segments = []
    for sid, c in order:
        m = pan == sid
        if not m.any():  # stuff entirely covered by things
            continue
        segments.append({"id": int(sid), "category_id": int(c), "area": int(m.sum()),
                         "bbox": bbox_of(m), "iscrowd": 0})
    return id_to_rgb(pan), segments


def _find_base(root: Path, progress: bool) -> Path:
    extract_folder(root / "ADEChallengeData2016.zip", "ADEChallengeData2016", root, progress=progress)
    for base in (root / "ADEChallengeData2016", root):
        if (base / "images").is_dir() and (base / "annotations").is_dir():
            for tar in (base / "annotations_instance.tar", root / "annotations_instance.tar"):
                extract_folder(tar, "annotations_instance", base, progress=progress)
            return base
    raise PrepareError(f"{root}: no ADEChallengeData2016/ with images/ and annotations/ "
                       f"(nor ADEChallengeData2016.zip)")


def prepare_ade20k(root: str | os.PathLike, *, splits: Sequence[str] | None = None,
                   panoptic: bool = True, semantic: bool = True, progress: bool = True) -> dict:
    """Prepare ADE20K for panoptic and semantic training/evaluation (module doc).

    Args:
        root: ``ADEChallengeData2016`` or its parent.
        splits: subset of ``train``, ``val`` (default: those present).
        panoptic: write the panoptic JSON/PNGs (needs ``annotations_instance/``).
        semantic: write ``annotations_detectron2/``.
        progress: tqdm progress bars.

    Returns:
        ``{split: {"json": path or None, "images": n, "converted": n, "semantic_written": n}}``.

    Raises:
        PrepareError: missing folders or files, unreadable or inconsistent annotations
            (the file is named).
    """
    base = _find_base(Path(root), progress)
    cats = _categories()
    names = dict(ADE20K_SPLITS)
    if splits is None:
        splits = [s for s, d in ADE20K_SPLITS if (base / "images" / d).is_dir()]
    summary = {}
    for split in splits:
        if split not in names:
            raise PrepareError(f"ADE20K split must be 'train' or 'val', got {split!r}")
        d = names[split]
        images = sorted((base / "images" / d).glob("*.jpg"))
        if not images:
            raise PrepareError(f"no *.jpg under {base / 'images' / d}")
        sem_dir, inst_dir = base / "annotations" / d, base / "annotations_instance" / d
        if panoptic and not inst_dir.is_dir():
            raise PrepareError(f"{inst_dir} not found: extract annotations_instance.tar "
                               f"(sceneparsing.csail.mit.edu) into {base}")
        out_json, pan_dir = base / f"ade20k_panoptic_{split}.json", base / f"ade20k_panoptic_{split}"
        sem_out = base / "annotations_detectron2" / d
        journal = Journal(out_json)

        def done(jpg: Path, rec: dict | None) -> bool:
            if not rec or not rec.get("image"):
                return False
            size = (rec["image"]["width"], rec["image"]["height"])
            return (not panoptic or valid_png(pan_dir / f"{jpg.stem}.png", size)) and (
                not semantic or valid_png(sem_out / f"{jpg.stem}.png", size))

        def convert(jpg: Path) -> dict:
            stem = jpg.stem
            sem = _read(sem_dir / f"{stem}.png", 2)
            with Image.open(jpg) as im:
                w, h = im.size
            if sem.shape != (h, w):
                raise PrepareError(f"{sem_dir / (stem + '.png')}: {sem.shape[1]}x{sem.shape[0]}, image is {w}x{h}")
            rec = {"image": {"id": stem, "file_name": jpg.name, "width": w, "height": h}}
            if panoptic:
                inst = _read(inst_dir / f"{stem}.png", 3)
                try:
                    rgb, segments = convert_ade20k_image(sem, inst, cats)
                except ValueError as exc:
                    raise PrepareError(f"{inst_dir / (stem + '.png')}: {exc}") from exc
                save_png(pan_dir / f"{stem}.png", rgb)
                rec["annotation"] = {"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments}
            else:
                rec["annotation"] = {"image_id": stem}
            if semantic:
                save_png(sem_out / f"{stem}.png", sem - np.uint8(1))  # 0 -> 255 (uint8 wrap)
            return rec

        records, converted = convert_all(images, key=lambda p: p.stem, done=done, convert=convert,
                                         journal=journal, desc=f"ade20k {split}", progress=progress)
        if panoptic and (converted or not out_json.is_file()):
            write_json(out_json, {"images": [r["image"] for r in records],
                                  "annotations": [r["annotation"] for r in records],
                                  "categories": cats})
        journal.finish()
        summary[split] = {"json": str(out_json) if panoptic else None, "images": len(records),
                          "converted": converted, "semantic_written": converted if semantic else 0}
    return summary


def _read(path: Path, ndim: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            a = np.array(im.convert("RGB") if ndim == 3 else im)
    except (OSError, ValueError) as exc:
        raise PrepareError(f"cannot read {path}: {exc}") from exc
    if a.dtype != np.uint8 or a.ndim != ndim:
        raise PrepareError(f"{path}: expected an 8-bit {'RGB' if ndim == 3 else 'single-channel'} PNG")
    return a
