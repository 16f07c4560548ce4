"""mIoU and AP against independent computations, and ``kmax evaluate`` end to end."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from eval_helpers import load_testdata, oracle_pq_compute
from kmax_deeplab.cli import main
from kmax_deeplab.evaluation import PanopticEvaluator


def _semantic(ids, info, void):
    cat = {s["id"]: s["category_id"] for s in info}
    out = np.full(ids.shape, void, np.int64)
    for i, c in cat.items():
        out[ids == i] = c
    return out


def test_semantic_metrics_match_pixelwise_computation(pq_testdata):
    categories, images = load_testdata(pq_testdata)
    ev = PanopticEvaluator(categories, semantic=True)
    cids = [c["id"] for c in categories]
    inter = dict.fromkeys(cids, 0)
    gt_n = dict.fromkeys(cids, 0)
    pred_n = dict.fromkeys(cids, 0)
    correct = labelled = 0
    for image_id, gt, gi, pred, pi in images:
        ev.update(gt, gi, pred, pi, image_id=image_id)
        g, p = _semantic(gt, gi, -1), _semantic(pred, pi, -2)  # id 0 listed in team's prediction
        lab = g != -1
        correct += int((g[lab] == p[lab]).sum())
        labelled += int(lab.sum())
        for c in cids:
            inter[c] += int(((g == c) & (p == c)).sum())
            gt_n[c] += int((g == c).sum())
            pred_n[c] += int(((p == c) & lab).sum())
    sem = ev.compute()["semantic"]
    ious = {c: inter[c] / (gt_n[c] + pred_n[c] - inter[c]) for c in cids if gt_n[c] + pred_n[c]}
    assert sem["per_class_iou"] == pytest.approx(ious, abs=1e-12)
    assert sem["miou"] == pytest.approx(np.mean(list(ious.values())), abs=1e-12)
    assert sem["pixel_accuracy"] == pytest.approx(correct / labelled, abs=1e-12)


def _scored_predictions(images):
    out = []
    for image_id, gt, gi, pred, pi in images:
        pi = [dict(s, score=round(1.0 - 0.013 * k, 3)) for k, s in enumerate(pi)]
        out.append((image_id, gt, gi, pred, pi))
    return out


def test_instance_ap_matches_direct_pycocotools(pq_testdata):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories, images = load_testdata(pq_testdata)
    images = _scored_predictions(images)
    things = {c["id"] for c in categories if c["isthing"]}
    ev = PanopticEvaluator(categories, instance=True)
    gts, dts, imgs = [], [], []
    for n, (image_id, gt, gi, pred, pi) in enumerate(images, start=1):
        ev.update(gt, gi, pred, pi, image_id=image_id)
        imgs.append({"id": n, "height": gt.shape[0], "width": gt.shape[1]})
        for s in gi:
            if s["category_id"] in things:
                m = np.asfortranarray((gt == s["id"]).astype(np.uint8))
                gts.append({"id": len(gts) + 1, "image_id": n, "category_id": s["category_id"],
                            "segmentation": mask_utils.encode(m), "iscrowd": s["iscrowd"],
                            "area": float(m.sum())})
        for s in pi:
            if s["category_id"] in things:
                m = np.asfortranarray((pred == s["id"]).astype(np.uint8))
                dts.append({"image_id": n, "category_id": s["category_id"],
                            "segmentation": mask_utils.encode(m), "score": s["score"]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": imgs, "annotations": gts,
                        "categories": [{"id": c} for c in sorted(things)]}
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(dts), iouType="segm")
        e.evaluate(); e.accumulate(); e.summarize()  # noqa: E702
    ours = ev.compute()["instance"]
    assert ours["ap"] == pytest.approx(e.stats[0], abs=1e-12)
    assert ours["ap50"] == pytest.approx(e.stats[1], abs=1e-12)
    assert 0.2 < ours["ap"] < 1.0


def test_instance_ap_of_ground_truth_is_one(pq_testdata):
    categories, images = load_testdata(pq_testdata)
    ev = PanopticEvaluator(categories, instance=True)
    for image_id, gt, gi, _, _ in images:
        ev.update(gt, gi, gt, [dict(s, score=1.0) for s in gi], image_id=image_id)
    assert ev.compute()["instance"]["ap"] == pytest.approx(1.0)


def test_kmax_evaluate_end_to_end(pq_testdata, tmp_path, capsys):
    categories, images = load_testdata(pq_testdata)
    pred = json.loads((pq_testdata / "coco_pred.json").read_text())
    for k, ann in enumerate(pred["annotations"]):
        for j, s in enumerate(ann["segments_info"]):
            s["score"] = 0.9 - 0.01 * (k + j)
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps(pred))
    out = tmp_path / "res" / "results.json"
    code = main(["evaluate", "--gt-json", str(pq_testdata / "coco_gt.json"), "--pred-json", str(pred_json),
                 "--pred-folder", str(pq_testdata / "coco_pred"), "--per-class", "--miou", "--ap",
                 "--workers", "2", "--no-progress", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "All       |  67.4   68.3   82.1     6" in printed
    assert "Things    |  57.7   59.1   73.1     4" in printed
    assert "umbrella" in printed and "mIoU" in printed and "AP50" in printed
    res = json.loads(out.read_text())
    ref = oracle_pq_compute(pq_testdata / "coco_gt.json", pq_testdata / "coco_pred.json")
    for group in ("All", "Things", "Stuff"):
        assert res["panoptic"][group]["pq"] == pytest.approx(ref[group]["pq"], abs=1e-12)
    assert res["panoptic"]["per_class"]["1"]["tp"] == 12
    assert set(res) >= {"panoptic", "semantic", "instance", "num_images", "categories"}
    assert res["num_images"] == 4


def test_kmax_evaluate_bad_input_exit_code(pq_testdata, tmp_path, capsys):
    pred = json.loads((pq_testdata / "coco_pred.json").read_text())
    pred["annotations"] = pred["annotations"][:1]
    (tmp_path / "p.json").write_text(json.dumps(pred))
    code = main(["evaluate", "--gt-json", str(pq_testdata / "coco_gt.json"), "--pred-json",
                 str(tmp_path / "p.json"), "--pred-folder", str(pq_testdata / "coco_pred"),
                 "--workers", "0", "--no-progress"])
    assert code == 1
    assert "no prediction for the image with id 2" in capsys.readouterr().err
