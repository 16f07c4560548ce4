"""hotcoco, the default file backend, against the official panopticapi.

The randomised cases of ``test_eval_pq_random`` (crowd, VOID, predicted id 0 as a real
segment, repeated crowd segments of one class, merges, splits, shifts; real GT from
tests/data) go through ``evaluate_files(backend="hotcoco")`` one image set each and
must give panopticapi's per-class counts and IoU sums; the inputs where hotcoco differs
(GT listing id 0, a category without ``isthing``) must be routed to ours.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from eval_helpers import oracle_pq_compute, write_png
from kmax_deeplab.evaluation import PanopticEvaluationError, evaluate_files, pq_compute
from kmax_deeplab.evaluation import hotcoco_backend
from test_eval_pq_random import _make_case, _sources

pytest.importorskip("hotcoco")

NUM_CASES = 300  # as test_eval_pq_random


def _write_case(tmp: Path, case: int, gt, gt_info, pred, pred_info, cats) -> tuple[Path, Path]:
    d = tmp / f"case{case}"
    (d / "gt").mkdir(parents=True)
    (d / "pred").mkdir()
    write_png(d / "gt" / "x.png", gt)
    write_png(d / "pred" / "x.png", pred)
    gt_json, pred_json = d / "gt.json", d / "pred.json"
    gt_json.write_text(json.dumps({"annotations": [{"image_id": case, "file_name": "x.png",
                                                    "segments_info": gt_info}], "categories": cats}))
    pred_json.write_text(json.dumps({"annotations": [{"image_id": case, "file_name": "x.png",
                                                      "segments_info": pred_info}]}))
    return gt_json, pred_json


def _oracle_stats(gt_json: Path, pred_json: Path, cats) -> dict:
    from panopticapi.evaluation import pq_compute_single_core

    gt_ann = json.loads(gt_json.read_text())["annotations"][0]
    pred_ann = json.loads(pred_json.read_text())["annotations"][0]
    with contextlib.redirect_stdout(io.StringIO()):
        st = pq_compute_single_core(0, [(gt_ann, pred_ann)], str(gt_json.parent / "gt"),
                                    str(pred_json.parent / "pred"), {c["id"]: c for c in cats})
    return {cid: (r.tp, r.fp, r.fn, float(r.iou)) for cid, r in st.pq_per_cat.items()}


def test_random_perturbations_hotcoco_matches_panopticapi(tmp_path, pq_testdata):
    sources = _sources(pq_testdata.parent)
    rng = np.random.default_rng(20240601)  # the same cases as test_eval_pq_random
    seen = {"hotcoco": 0, "routed": 0, "zero_segment": 0, "crowd": 0, "tp": 0, "fp": 0, "fn": 0}
    for case in range(NUM_CASES):
        cats, images = sources[case % len(sources)]
        gt, gt_info, pred, pred_info = _make_case(rng, cats, images)
        gt_json, pred_json = _write_case(tmp_path, case, gt, gt_info, pred, pred_info, cats)
        if any(s["id"] == 0 for s in gt_info):
            # hotcoco follows panopticapi's ill-defined GT id 0 (or raises): routed to ours.
            with pytest.raises(PanopticEvaluationError, match="lists id 0"):
                evaluate_files(gt_json, pred_json, num_workers=0, progress=False, backend="hotcoco")
            seen["routed"] += 1
            continue
        out = evaluate_files(gt_json, pred_json, num_workers=0, progress=False, backend="hotcoco")
        assert out["backend"] == "hotcoco", case
        ref = _oracle_stats(gt_json, pred_json, cats)
        for cid, got in out["panoptic"]["per_class"].items():
            want = ref.get(cid, (0, 0, 0, 0.0))
            assert (got["tp"], got["fp"], got["fn"]) == want[:3], (case, cid)
            assert got["iou"] == pytest.approx(want[3], abs=1e-12, rel=0), (case, cid)
            seen["tp"] += got["tp"]; seen["fp"] += got["fp"]; seen["fn"] += got["fn"]  # noqa: E702
        seen["hotcoco"] += 1
        seen["zero_segment"] += any(s["id"] == 0 for s in pred_info)
        seen["crowd"] += any(s["iscrowd"] for s in gt_info)
    # The cases really exercised the edge cases on hotcoco.
    assert seen["tp"] >= 100 and seen["fp"] >= 50 and seen["fn"] >= 50, seen
    assert seen["zero_segment"] >= 10 and seen["crowd"] >= 30 and seen["routed"] >= 2, seen


def test_default_backend_is_hotcoco_and_equals_panopticapi(pq_testdata):
    files = (pq_testdata / "coco_gt.json", pq_testdata / "coco_pred.json")
    out = evaluate_files(*files, num_workers=0, progress=False)
    assert out["backend"] == "hotcoco"
    ref = oracle_pq_compute(*files)
    ours = pq_compute(*files, num_workers=0, progress=False, backend="kmax")
    for group in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            assert out["panoptic"][group][key] == pytest.approx(ref[group][key], abs=1e-15, rel=0)
            assert out["panoptic"][group][key] == pytest.approx(ours[group][key], abs=1e-15, rel=0)
    assert out["panoptic"]["per_class"].keys() == ours["per_class"].keys()
    for cid, r in ours["per_class"].items():
        h = out["panoptic"]["per_class"][cid]
        assert (h["tp"], h["fp"], h["fn"]) == (r["tp"], r["fp"], r["fn"])


def test_category_without_isthing_is_routed_to_ours(pq_testdata, tmp_path):
    gt = json.loads((pq_testdata / "coco_gt.json").read_text())
    del gt["categories"][0]["isthing"]
    path = tmp_path / "coco_gt.json"
    path.write_text(json.dumps(gt))
    cats = gt["categories"]
    assert "isthing" in hotcoco_backend.hotcoco_unsupported_reason(gt, cats)
    with pytest.raises(PanopticEvaluationError, match="needs 'id' and 'isthing'"):
        evaluate_files(path, pq_testdata / "coco_pred.json", pq_testdata / "coco_gt",
                       pq_testdata / "coco_pred", num_workers=0, progress=False)


def test_hotcoco_errors_become_our_error_messages(pq_testdata, tmp_path):
    pred = json.loads((pq_testdata / "coco_pred.json").read_text())
    pred["annotations"][0]["segments_info"].pop()  # a PNG id no longer listed
    path = tmp_path / "coco_pred.json"
    path.write_text(json.dumps(pred))
    with pytest.raises(PanopticEvaluationError, match=r"image 1\b"):
        evaluate_files(pq_testdata / "coco_gt.json", path, None, pq_testdata / "coco_pred",
                       num_workers=0, progress=False)


def test_without_hotcoco_falls_back_to_ours(pq_testdata, monkeypatch):
    monkeypatch.setattr(hotcoco_backend, "hotcoco_available", lambda: False)
    out = evaluate_files(pq_testdata / "coco_gt.json", pq_testdata / "coco_pred.json",
                         num_workers=0, progress=False)
    assert out["backend"] == "kmax"
    assert out["panoptic"]["All"]["pq"] == pytest.approx(0.6740486628641355, abs=1e-15)


def test_miou_and_ap_use_ours_in_one_pass(pq_testdata):
    out = evaluate_files(pq_testdata / "coco_gt.json", pq_testdata / "coco_pred.json",
                         num_workers=0, progress=False, semantic=True)
    assert out["backend"] == "kmax" and "semantic" in out


def test_cityscapes_string_image_ids_on_hotcoco(cityscapes_sample):
    rel = "gtFine/cityscapes_panoptic_dummy_trainId"
    out = evaluate_files(cityscapes_sample / f"{rel}.json", cityscapes_sample / f"{rel}.json",
                         dataset="cityscapes", num_workers=0, progress=False)
    assert out["backend"] == "hotcoco"
    assert out["panoptic"]["All"]["n"] == 5 and out["panoptic"]["per_class"][13]["tp"] == 5



@pytest.mark.parametrize("edit", ["no_area", "wrong_area"])
def test_gt_area_rules_match_ours(pq_testdata, tmp_path, edit):
    # panopticapi takes |g| from the JSON 'area' when given; ours counts the PNG otherwise.
    gt = json.loads((pq_testdata / "coco_gt.json").read_text())
    for ann in gt["annotations"]:
        for s in ann["segments_info"]:
            if edit == "no_area":
                s.pop("area")
            else:
                s["area"] += 300
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    args = (path, pq_testdata / "coco_pred.json", pq_testdata / "coco_gt", pq_testdata / "coco_pred")
    hot = evaluate_files(*args, num_workers=0, progress=False)
    ours = evaluate_files(*args, num_workers=0, progress=False, backend="kmax")
    assert hot["backend"] == "hotcoco"
    for cid, r in ours["panoptic"]["per_class"].items():
        h = hot["panoptic"]["per_class"][cid]
        assert (h["tp"], h["fp"], h["fn"]) == (r["tp"], r["fp"], r["fn"])
        assert h["iou"] == pytest.approx(r["iou"], abs=1e-12, rel=0)
    if edit == "wrong_area":
        assert hot["panoptic"]["All"]["pq"] < 0.6740486628641355 - 1e-3  # the JSON area counts


def test_prediction_area_iscrowd_score_are_ignored_as_by_panopticapi(pq_testdata, tmp_path):
    pred = json.loads((pq_testdata / "coco_pred.json").read_text())
    for ann in pred["annotations"]:
        for s in ann["segments_info"]:
            s.update(area=5, iscrowd=1, isthing=1, score=0.5)  # what a predictor might add
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(pred))
    out = evaluate_files(pq_testdata / "coco_gt.json", path, None, pq_testdata / "coco_pred",
                         num_workers=0, progress=False)
    assert out["backend"] == "hotcoco"
    assert out["panoptic"]["All"]["pq"] == pytest.approx(0.6740486628641355, abs=1e-15, rel=0)
