"""Cityscapes panoptic: identical to cityscapesScripts' evalPanopticSemanticLabeling."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from scipy import ndimage

from eval_helpers import read_ids, write_set
from kmax_deeplab.evaluation import evaluate_files
from kmax_deeplab.evaluation.cityscapes import cityscapes_categories

GT_REL = "gtFine/cityscapes_panoptic_dummy_trainId"


def _perturbations(gt, segs):
    """Predictions made from the real GT: (ids, segments_info) per variant."""
    cat = {s["id"]: s["category_id"] for s in segs}
    cars = [s["id"] for s in segs if s["category_id"] == 13 and not s["iscrowd"]]
    crowd = [s["id"] for s in segs if s["iscrowd"]][0]
    out = []

    def info(ids, cats):
        return [{"id": int(i), "category_id": int(cats[i])} for i in np.unique(ids) if i != 0]

    out.append((gt.copy(), info(gt, cat)))  # perfect
    p = gt.copy(); p[p == cars[0]] = 0  # noqa: E702  dropped car -> FN
    out.append((p, info(p, cat)))
    p = gt.copy(); p[p == cars[2]] = cars[1]  # noqa: E702  two cars merged
    out.append((p, info(p, cat)))
    p = gt.copy(); c2 = dict(cat); c2[23] = 8  # noqa: E702  sky relabelled vegetation
    out.append((p, info(p, c2)))
    p = gt.copy()
    p[ndimage.binary_dilation(gt == cars[3], iterations=15)] = cars[3]  # dilated car
    out.append((p, info(p, cat)))
    p = gt.copy(); p[gt == crowd] = 26900; c3 = dict(cat); c3[26900] = 13  # noqa: E702 car on crowd
    out.append((p, info(p, c3)))
    p = np.zeros_like(gt); p[:, 20:] = gt[:, :-20]  # noqa: E702  shifted right by 20 px
    out.append((p, info(p, cat)))
    p = gt.copy(); p[(gt == 0) | (gt == 11)] = 500; c4 = dict(cat); c4[500] = 2  # noqa: E702 building over VOID
    out.append((p, info(p, c4)))
    return out


def test_identical_to_cityscapesscripts(cityscapes_sample, tmp_path):
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    gt_json = json.loads((cityscapes_sample / f"{GT_REL}.json").read_text())
    ann = gt_json["annotations"][0]
    gt = read_ids(cityscapes_sample / GT_REL / ann["file_name"])
    gt_anns, gt_images, pred_anns, pred_images = [], {}, [], {}
    for k, (pred, pred_info) in enumerate(_perturbations(gt, ann["segments_info"])):
        name = f"dummy_{k:06d}_000000"
        gt_anns.append({"image_id": name, "file_name": f"{name}_gtFine_panoptic.png",
                        "segments_info": ann["segments_info"]})
        gt_images[f"{name}_gtFine_panoptic.png"] = gt
        pred_anns.append({"image_id": name, "file_name": f"{name}.png", "segments_info": pred_info})
        pred_images[f"{name}.png"] = pred
    # The reference reads categories from the GT JSON (createPanopticImgs --use-train-id);
    # ours gets deeplab2's form without them and infers train ids from the _trainId name.
    ref_gt = write_set(tmp_path, "ref_gt_trainId", gt_anns, gt_images, cityscapes_categories(True))
    our_gt = write_set(tmp_path, "cityscapes_panoptic_val_trainId", gt_anns, gt_images)
    pred_json = write_set(tmp_path, "pred", pred_anns, pred_images)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = evaluatePanoptic(str(ref_gt), str(tmp_path / "ref_gt_trainId"), str(pred_json),
                               str(tmp_path / "pred"), str(tmp_path / "ref_results.json"))
    ours = evaluate_files(our_gt, pred_json, dataset="cityscapes", num_workers=0,
                          progress=False)["panoptic"]
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert ours[group][key] == pytest.approx(ref[group][key], abs=1e-12, rel=0)
    assert set(ours["per_class"]) == set(ref["per_class"]) == set(range(19))
    for cid, r in ref["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert ours["per_class"][cid][key] == pytest.approx(r[key], abs=1e-12, rel=0)
    # Not trivially perfect: the perturbations produced errors of every kind.
    car = ours["per_class"][13]
    assert car["fp"] > 0 and car["fn"] > 0 and ours["All"]["pq"] < 0.99


def test_cityscapes_categories_id_spaces(cityscapes_sample):
    file_cats = json.loads((cityscapes_sample / "panoptic_cityscapes_categories.json").read_text())
    label = cityscapes_categories(False)
    train = cityscapes_categories(True)
    assert [c["id"] for c in label] == [c["id"] for c in file_cats]  # eval label ids 7..33
    assert [c["name"] for c in label] == [c["name"] for c in file_cats]
    assert [c["isthing"] for c in train] == [c["isthing"] for c in file_cats]
    assert [c["id"] for c in train] == list(range(19))


def test_original_sample_against_itself(cityscapes_sample):
    r = evaluate_files(cityscapes_sample / f"{GT_REL}.json", cityscapes_sample / f"{GT_REL}.json",
                       dataset="cityscapes", num_workers=0, progress=False)["panoptic"]
    # road, building, vegetation, sky (stuff) + car (thing); the crowd car is ignored.
    assert (r["All"]["n"], r["Things"]["n"], r["Stuff"]["n"]) == (5, 1, 4)
    assert r["All"]["pq"] == 1.0 and r["per_class"][13]["tp"] == 5
