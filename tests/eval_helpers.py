"""Helpers shared by the evaluation tests: the panopticapi oracle and file writing."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def oracle_pq_compute(gt_json, pred_json, gt_folder=None, pred_folder=None):
    """panopticapi-lite's official ``pq_compute`` with its prints silenced."""
    from panopticapi.evaluation import pq_compute

    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(str(gt_json), str(pred_json),
                          None if gt_folder is None else str(gt_folder),
                          None if pred_folder is None else str(pred_folder))


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def write_png(path: Path, ids: np.ndarray) -> None:
    Image.fromarray(id_to_rgb(ids)).save(path)


def read_ids(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path), dtype=np.uint32)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def write_set(folder: Path, name: str, annotations, images_ids, categories=None) -> Path:
    """Write ``name.json`` + ``name/`` PNGs; ``images_ids`` maps file_name -> id map."""
    d = folder / name
    d.mkdir(parents=True, exist_ok=True)
    for file_name, ids in images_ids.items():
        write_png(d / file_name, ids)
    data = {"annotations": annotations}
    if categories is not None:
        data["categories"] = categories
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def load_testdata(pq_testdata: Path):
    gt = json.loads((pq_testdata / "coco_gt.json").read_text())
    pred = json.loads((pq_testdata / "coco_pred.json").read_text())
    images = []
    preds = {a["image_id"]: a for a in pred["annotations"]}
    for g in gt["annotations"]:
        p = preds[g["image_id"]]
        images.append((g["image_id"], read_ids(pq_testdata / "coco_gt" / g["file_name"]), g["segments_info"],
                       read_ids(pq_testdata / "coco_pred" / p["file_name"]), p["segments_info"]))
    return gt["categories"], images
