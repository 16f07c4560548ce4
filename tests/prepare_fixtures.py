"""Raw-format dataset fixtures for the ``kmax prepare`` tests, built at test time from
the real samples of the conftest fixtures (nothing extra is committed).

* Cityscapes (``make_cityscapes_raw``): from deeplab2's Cityscapes-format dummy sample
  (github.com/google-research/deeplab2 @64bc1c1, ``data/testdata``; Apache-2.0; a real
  photo, not from Cityscapes). Its panoptic PNG already holds Cityscapes segment ids
  (label id * 1000 + k for cars, label id for stuff and the crowd car region), i.e. the
  ``*_gtFine_instanceIds.png`` encoding; we add labels the conversion must drop or keep
  (ego vehicle 1, ground 6: ignored stuff; caravan 29: an ignored thing class; a person
  24000 and a rider 25000 instance; a person crowd region 24) and derive
  ``*_gtFine_labelIds.png``. Two images: the original (val) and its mirror (train).
* ADE20K (``make_ade20k_raw``): from the COCO val2017 panoptic sample
  (github.com/cocodataset/panopticapi @7bb4655 ``sample_data``; annotations CC BY 4.0,
  photos Flickr CC BY-NC(-SA) 2.0): each COCO segment is given an ADE20K class (things to
  thing classes, stuff to stuff classes) and written in the ADEChallengeData2016 layout:
  ``annotations/*.png`` (class + 1, 0 = other) and ``annotations_instance/*.png`` (R =
  instance-class + 1, G = instance index, B = 0), as Mask2Former's
  ``prepare_ade20k_pan_seg.py`` reads them.
* COCO (``make_coco_raw``): the panopticapi sample itself in the COCO layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def _read_ids(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint32)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def _cityscapes_instance_ids(ids: np.ndarray, mirror: bool) -> np.ndarray:
    ids = ids.astype(np.int64).copy()
    h, w = ids.shape
    ids[h - 40 :, :] = 1  # ego vehicle (ignoreInEval stuff)
    ids[(ids == 0)] = 6  # former void -> ground (ignoreInEval)
    ids[0:2, 0:3] = 0  # some unlabeled pixels remain
    ys, xs = np.nonzero(ids == 11)  # building: carve instances out of it
    y0, x0 = int(ys.min()) + 10, int(xs.min()) + 10
    ids[y0 : y0 + 30, x0 : x0 + 12] = 24000  # person
    ids[y0 : y0 + 30, x0 + 20 : x0 + 32] = 25000  # rider
    ids[y0 + 40 : y0 + 60, x0 : x0 + 40] = 24  # person crowd region
    ids[y0 + 70 : y0 + 90, x0 : x0 + 50] = 29000  # caravan instance (ignoreInEval)
    if mirror:
        ids = ids[:, ::-1].copy()
    return ids


def make_cityscapes_raw(root: Path, sample: Path) -> list[str]:
    """Write ``root/gtFine/{val,train}/dummy/*`` and ``root/leftImg8bit/...``; returns image ids."""
    gt = _read_ids(sample / "gtFine" / "cityscapes_panoptic_dummy_trainId" /
                   "dummy_000000_000000_gtFine_panoptic.png")
    photo = Image.open(sample / "leftImg8bit" / "dummy_000000_000000_leftImg8bit.png").convert("RGB")
    out = []
    for split, name, mirror in (("val", "dummy_000000_000000", False), ("train", "dummy_000001_000000", True)):
        inst = _cityscapes_instance_ids(gt, mirror)
        label = np.where(inst >= 1000, inst // 1000, inst).astype(np.uint8)
        d = root / "gtFine" / split / "dummy"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(inst.astype(np.uint16)).save(d / f"{name}_gtFine_instanceIds.png")
        Image.fromarray(label).save(d / f"{name}_gtFine_labelIds.png")
        img_dir = root / "leftImg8bit" / split / "dummy"
        img_dir.mkdir(parents=True, exist_ok=True)
        (photo.transpose(Image.FLIP_LEFT_RIGHT) if mirror else photo).save(
            img_dir / f"{name}_leftImg8bit.png")
        out.append(name)
    return out


# ADE20K classes (0-based SceneParse150 ids, catalog order) given to the COCO sample's
# categories: things -> thing classes, stuff -> stuff classes.
ADE_FOR_COCO = {1: 12, 37: 119, 19: 126, 8: 83,  # person, sports ball->ball, horse->animal, truck
                193: 9, 125: 13, 187: 2, 184: 4}  # grass, gravel->earth, sky, tree


def make_ade20k_raw(root: Path, coco_sample: Path) -> dict[str, list[str]]:
    """Write ``root/ADEChallengeData2016`` (images, annotations, annotations_instance)."""
    from kmax_deeplab.data.prepare.ade20k import ADE20K_INSTANCE_TO_SEMANTIC

    sem_to_inst = {}
    for inst, sem in enumerate(ADE20K_INSTANCE_TO_SEMANTIC):
        sem_to_inst.setdefault(sem, inst)  # first instance class of that semantic class
    data = json.loads((coco_sample / "sample_data" / "panoptic_examples.json").read_text())
    cats = {c["id"]: c for c in data["categories"]}
    base = root / "ADEChallengeData2016"
    names = {"training": [], "validation": []}
    for k, ann in enumerate(data["annotations"]):
        split = "validation" if k == 0 else "training"
        name = f"ADE_{'val' if k == 0 else 'train'}_{k + 1:08d}"
        ids = _read_ids(coco_sample / "sample_data" / "panoptic_examples" / ann["file_name"])
        sem = np.zeros(ids.shape, np.uint8)  # 0 = "other" (ignored)
        inst = np.zeros(ids.shape + (3,), np.uint8)
        n = 0
        for s in ann["segments_info"]:
            m = ids == s["id"]
            c = ADE_FOR_COCO[s["category_id"]]
            sem[m] = c + 1
            if cats[s["category_id"]]["isthing"] and not s["iscrowd"]:
                n += 1
                inst[m, 0] = sem_to_inst[c] + 1
                inst[m, 1] = n
        for sub, arr in (("annotations", sem), ("annotations_instance", inst)):
            (base / sub / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(base / sub / split / f"{name}.png")
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        jpg = coco_sample / "sample_data" / "input_images" / ann["file_name"].replace(".png", ".jpg")
        shutil.copy(jpg, base / "images" / split / f"{name}.jpg")
        names[split].append(name)
    return names


def make_coco_raw(root: Path, coco_sample: Path, split: str = "val2017") -> Path:
    """The sample as ``root/annotations/panoptic_{split}.json`` + PNGs + ``root/{split}/``."""
    src = coco_sample / "sample_data"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "panoptic_examples.json", root / "annotations" / f"panoptic_{split}.json")
    shutil.copytree(src / "panoptic_examples", root / "annotations" / f"panoptic_{split}")
    shutil.copytree(src / "input_images", root / split)
    return root
