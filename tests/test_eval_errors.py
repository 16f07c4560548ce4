"""Bad input raises PanopticEvaluationError naming the image and segment."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from kmax_deeplab.evaluation import PanopticEvaluationError, PanopticQualityAccumulator, pq_compute

CATS = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]


def _maps():
    gt = np.zeros((6, 8), np.uint32)
    gt[:3] = 5
    gt[3:] = 7
    pred = gt.copy()
    gt_info = [{"id": 5, "category_id": 1, "iscrowd": 0}, {"id": 7, "category_id": 2, "iscrowd": 0}]
    pred_info = [{"id": 5, "category_id": 1}, {"id": 7, "category_id": 2}]
    return gt, gt_info, pred, pred_info


def _raises(match, gt, gt_info, pred, pred_info):
    with pytest.raises(PanopticEvaluationError, match=match):
        PanopticQualityAccumulator(CATS).update(gt, gt_info, pred, pred_info, image_id="img42")


def test_valid_input_passes():
    acc = PanopticQualityAccumulator(CATS)
    acc.update(*_maps(), image_id="img42")
    assert acc.compute()["All"]["pq"] == 1.0


def test_png_id_not_in_segments_info():
    gt, gt_info, pred, pred_info = _maps()
    pred[0, 0] = 99
    _raises(r"'img42'.*prediction segment id\(s\) \[99\] are in the PNG but not in segments_info",
            gt, gt_info, pred, pred_info)
    gt2 = gt.copy()
    gt2[0, 0] = 98
    _raises(r"'img42'.*ground truth segment id\(s\) \[98\] are in the PNG", gt2, gt_info, *_maps()[2:])


def test_segments_info_id_not_in_png():
    gt, gt_info, pred, pred_info = _maps()
    _raises(r"'img42'.*prediction segment id\(s\) \[123\] are in segments_info but not in the PNG",
            gt, gt_info, pred, pred_info + [{"id": 123, "category_id": 1}])


def test_unknown_category():
    gt, gt_info, pred, pred_info = _maps()
    pred_info[1]["category_id"] = 77
    _raises(r"'img42'.*predicted segment 7 has unknown category_id 77", gt, gt_info, pred, pred_info)


def test_size_mismatch():
    gt, gt_info, pred, pred_info = _maps()
    _raises(r"'img42'.*differ in size", gt, gt_info, pred[:, :7], pred_info)


def test_duplicate_ids_and_gt_listing_void():
    gt, gt_info, pred, pred_info = _maps()
    _raises(r"'img42'.*segment id 5 is listed twice", gt, gt_info, pred, pred_info + [pred_info[0]])
    gt[0, 0] = 0
    _raises(r"'img42'.*lists id 0", gt, gt_info + [{"id": 0, "category_id": 2, "iscrowd": 0}], pred,
            pred_info)


@pytest.fixture()
def copied(pq_testdata, tmp_path):
    for name in ("coco_gt", "coco_pred"):
        shutil.copytree(pq_testdata / name, tmp_path / name)
        shutil.copy(pq_testdata / f"{name}.json", tmp_path / f"{name}.json")
    return tmp_path


def test_gt_image_without_prediction(copied):
    pred = json.loads((copied / "coco_pred.json").read_text())
    gone = pred["annotations"].pop(2)["image_id"]
    (copied / "coco_pred.json").write_text(json.dumps(pred))
    with pytest.raises(PanopticEvaluationError, match=f"no prediction for the image with id {gone!r}"):
        pq_compute(copied / "coco_gt.json", copied / "coco_pred.json", num_workers=0, progress=False)


def test_unreadable_png(copied):
    (copied / "coco_pred" / "cat.png").write_bytes(b"not a png")
    with pytest.raises(PanopticEvaluationError, match=r"cannot read panoptic PNG .*cat\.png \(image 2\)"):
        pq_compute(copied / "coco_gt.json", copied / "coco_pred.json", num_workers=0, progress=False)


def test_error_crosses_worker_processes(copied):
    (copied / "coco_pred" / "team.png").unlink()
    with pytest.raises(PanopticEvaluationError, match=r"team\.png"):
        pq_compute(copied / "coco_gt.json", copied / "coco_pred.json", num_workers=2, progress=False)
