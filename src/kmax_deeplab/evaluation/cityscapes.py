"""Cityscapes panoptic conventions for evaluation.

cityscapesScripts ``preparation/createPanopticImgs.py`` writes COCO-panoptic GT for
the 19 evaluated classes: ``category_id`` is the label ``id`` (7..33) by default or
the ``trainId`` (0..18) with ``--use-train-id`` (files then end in ``_trainId``).
Segment ids are ``id * 1000 + k`` for thing instances and ``id`` for stuff and crowd;
ids below 1000 of a thing class are ``iscrowd = 1``; ``ignoreInEval`` classes become
VOID. ``evaluation/evalPanopticSemanticLabeling.py`` then runs panopticapi's PQ code
unchanged, so the same :mod:`~kmax_deeplab.evaluation.panoptic_quality` applies; only
the categories (which some converted JSONs, like deeplab2's, omit) need supplying.
"""

from __future__ import annotations

import os

__all__ = ["CITYSCAPES_CLASSES", "cityscapes_categories", "guess_uses_train_id"]

# (name, label id, train id, isthing): cityscapesScripts helpers/labels.py, evaluated classes.
CITYSCAPES_CLASSES: tuple[tuple[str, int, int, int], ...] = (
    ("road", 7, 0, 0), ("sidewalk", 8, 1, 0), ("building", 11, 2, 0), ("wall", 12, 3, 0),
    ("fence", 13, 4, 0), ("pole", 17, 5, 0), ("traffic light", 19, 6, 0),
    ("traffic sign", 20, 7, 0), ("vegetation", 21, 8, 0), ("terrain", 22, 9, 0),
    ("sky", 23, 10, 0), ("person", 24, 11, 1), ("rider", 25, 12, 1), ("car", 26, 13, 1),
    ("truck", 27, 14, 1), ("bus", 28, 15, 1), ("train", 31, 16, 1), ("motorcycle", 32, 17, 1),
    ("bicycle", 33, 18, 1),
)


def cityscapes_categories(use_train_id: bool) -> list[dict]:
    """The 19 categories as ``createPanopticImgs`` writes them (order of ``labels``).

    Args:
        use_train_id: ``True`` for ``--use-train-id`` data (ids 0..18), else label ids.
    """
    return [{"id": tid if use_train_id else lid, "name": name, "isthing": th}
            for name, lid, tid, th in CITYSCAPES_CLASSES]


def guess_uses_train_id(gt_json_file: str | os.PathLike) -> bool:
    """``createPanopticImgs --use-train-id`` names its output ``*_trainId.json``."""
    return os.path.splitext(os.path.basename(os.fspath(gt_json_file)))[0].endswith("_trainId")
