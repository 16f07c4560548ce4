"""Semantic targets from panoptic datasets: a train-id label map per panoptic PNG.

The rule is the field's (Mask2Former ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py``,
detectron2 ``prepare_panoptic_fpn.py`` with every class kept apart, and ``kmax prepare coco``
(:func:`kmax_deeplab.data.prepare.coco.panoptic_to_semantic`)): every pixel starts as the ignore
value 255 (void: id 0 or any id not listed), then each listed segment's pixels get its category's
train id (the dataset catalog's contiguous order). Crowd segments keep their class, as in
Mask2Former and cityscapesScripts' ``labelTrainIds`` (a crowd region is still "car");
``crowd="ignore"`` makes them 255 instead.

* :func:`panoptic_to_train_ids`: one map from ids + checked segments.
* :class:`PanopticSemanticDataset`: a :class:`~kmax_deeplab.data.coco_panoptic.COCOPanopticDataset`
  (COCO, Cityscapes-panoptic from ``createPanopticImgs``, ADE20K-panoptic, custom) read as a
  semantic dataset: records ``{"image", "sem_seg", "file_name", "image_id", "height",
  "width"}`` like :class:`~kmax_deeplab.data.semantic.SemanticSegDataset`, so the semantic
  training pipeline (:func:`~kmax_deeplab.data.semantic.build_semantic_transforms`) applies.
* :func:`iter_semantic_labels`: the maps of a panoptic JSON + PNG folder without reading the
  images (``kmax evaluate --task semantic --gt-json``); :func:`prediction_stem` names the
  ``kmax predict`` output that belongs to each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset

from kmax_deeplab.data.image_io import load_panoptic_png

__all__ = ["CROWD_RULES", "PanopticSemanticDataset", "iter_semantic_labels", "panoptic_to_train_ids",
           "prediction_stem"]

IGNORE = 255
CROWD_RULES = ("class", "ignore")


def panoptic_to_train_ids(ids: np.ndarray, segments: Sequence[dict], *, crowd: str = "class",
                          ignore_value: int = IGNORE) -> np.ndarray:
    """``[H, W]`` panoptic segment ids -> ``[H, W]`` uint8 train ids (``ignore_value`` = void).

    Args:
        ids: int segment ids (0 = void unless listed).
        segments: ``{"id", "train_id", "iscrowd"}`` per listed segment (the checked segments of
            :meth:`COCOPanopticDataset.load_record`).
        crowd: ``"class"`` (crowd pixels get their class, the field's rule) or ``"ignore"``.
        ignore_value: the value of unlabelled pixels (255).

    Raises:
        ValueError: an unknown ``crowd`` rule or a train id that does not fit uint8.
    """
    if crowd not in CROWD_RULES:
        raise ValueError(f"crowd must be one of {CROWD_RULES}, got {crowd!r}")
    out = np.full(ids.shape, ignore_value, dtype=np.uint8)
    for s in segments:
        tid = int(s["train_id"])
        if not 0 <= tid < 255:
            raise ValueError(f"segment {s['id']}: train id {tid} does not fit a uint8 label map")
        out[ids == int(s["id"])] = ignore_value if (crowd == "ignore" and s.get("iscrowd")) else tid
    return out


class PanopticSemanticDataset(Dataset):
    """A panoptic dataset read as semantic segmentation.

    Args:
        panoptic: the :class:`~kmax_deeplab.data.coco_panoptic.COCOPanopticDataset` (its own
            ``transforms`` are not used).
        transforms: semantic ``(record, rng) -> record`` transforms (e.g.
            :func:`~kmax_deeplab.data.semantic.build_semantic_transforms`).
        crowd: see :func:`panoptic_to_train_ids`.
        seed: sample ``i`` of epoch ``e`` uses ``numpy.random.default_rng([seed, e, i])``.

    Raises:
        ValueError: an unknown ``crowd`` rule.
        PanopticDataError: (on access) a bad sample, named (the panoptic dataset's checks).
    """

    def __init__(self, panoptic: Any, *, transforms: Callable | None = None, crowd: str = "class",
                 seed: int = 0) -> None:
        if crowd not in CROWD_RULES:
            raise ValueError(f"crowd must be one of {CROWD_RULES}, got {crowd!r}")
        self.panoptic = panoptic
        self.transforms = transforms
        self.crowd = crowd
        self.seed = int(seed)
        self.epoch = 0
        self.meta = panoptic.meta
        self.classes = tuple(self.meta.class_names)
        self.palette = tuple(self.meta.colors)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the augmentation draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.panoptic)

    def load_record(self, index: int) -> dict[str, Any]:
        """Sample ``index`` before transforms: ``image`` uint8 ``[H, W, 3]``, ``sem_seg`` int64
        ``[H, W]`` train ids (255 = ignore), ``file_name``, ``image_id``, ``height``, ``width``."""
        rec = self.panoptic.load_record(index)
        sem = panoptic_to_train_ids(rec["panoptic"], rec["segments"], crowd=self.crowd).astype(np.int64)
        return {"image": rec["image"], "sem_seg": sem, "file_name": rec["file_name"], "image_id": rec["image_id"],
                "height": rec["height"], "width": rec["width"]}

    load = load_record  # the name SemanticSegDataset uses (SemanticValidation reads either)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.load_record(index)
        if self.transforms is not None:
            record = self.transforms(record, np.random.default_rng([self.seed, self.epoch, index]))
        return record


def prediction_stem(image_file: str) -> str:
    """The stem ``kmax predict`` gives the prediction of ``image_file`` (the image's file stem;
    createPanopticImgs' ``<id>_gtFine_leftImg8bit.png`` names the image ``<id>_leftImg8bit.png``)."""
    stem = Path(str(image_file)).stem
    return stem[: -len("_gtFine_leftImg8bit")] + "_leftImg8bit" if stem.endswith("_gtFine_leftImg8bit") else stem


def iter_semantic_labels(panoptic: Any, *, crowd: str = "class") -> Iterator[tuple[str, np.ndarray]]:
    """``(prediction stem, uint8 [H, W] train ids)`` per annotation of a panoptic dataset,
    from its PNGs only (images are not read; the segments are checked as in training).

    Raises:
        PanopticDataError: a missing or inconsistent panoptic PNG (named).
    """
    from kmax_deeplab.data.image_io import PanopticDataError

    for index, rec in enumerate(panoptic.records):
        png = panoptic.panoptic_dir / rec["panoptic_file"]
        if not png.is_file():
            raise PanopticDataError(f"{png}: panoptic PNG not found (image_id {rec['image_id']!r})")
        ids = load_panoptic_png(png).astype(np.int32)
        segments = panoptic._check_segments(rec, ids, png)
        yield prediction_stem(rec["image_file"]), panoptic_to_train_ids(ids, segments, crowd=crowd)
