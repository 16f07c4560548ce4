"""Cityscapes instance AP and mIoU (``kmax evaluate --dataset cityscapes --instance``)
equal cityscapesScripts' evalInstanceLevelSemanticLabeling / evalPixelLevelSemanticLabeling
run directly on submission files this test writes itself, on gtFine fixtures made from
the real Cityscapes-format sample and perturbed predictions; mIoU also equals a numpy
computation of the benchmark's rules."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from eval_helpers import write_png
from kmax_deeplab.cli import main
from kmax_deeplab.evaluation import PanopticEvaluationError
from kmax_deeplab.evaluation.cityscapes import CITYSCAPES_CLASSES
from kmax_deeplab.evaluation.cityscapes_official import (
    cityscapes_scripts_compat,
    evaluate_cityscapes_official,
)
from prepare_fixtures import make_cityscapes_raw

pytest.importorskip("cityscapesscripts")

TRAIN_OF = {lid: tid for _, lid, tid, _ in CITYSCAPES_CLASSES}
THINGS = {lid for _, lid, _, th in CITYSCAPES_CLASSES if th}


def _perturb(gt, k, rng):
    """Prediction k made from the GT instance-id map (ids: label*1000+j or label)."""
    p = gt.copy()
    p[np.isin(p, [0, 1, 6, 29000])] = 0  # ignored labels -> predicted VOID
    cars = sorted(i for i in np.unique(gt) if i // 1000 == 26)
    if k == 1:
        p[p == cars[0]] = 0  # a missed car
    elif k == 2:
        p[p == cars[2]] = cars[1]  # two cars merged
    elif k == 3:
        p[ndimage.binary_dilation(gt == cars[3], iterations=12)] = cars[3]  # a fat car
    elif k == 4:
        p[p == 24000] = 25005  # the person predicted as a rider
    elif k == 5:
        q = np.zeros_like(p)
        q[:, 15:] = p[:, :-15]  # shifted by 15 px
        p = q
    elif k == 6:
        p[100:160, 100:200] = 26077  # a false car
        p[p == 23] = 21  # sky predicted as vegetation
    elif k == 7:
        p[p == 26] = 26050  # the crowd region predicted as one car
    return p


def _cats_of(ids):
    return {int(i): (int(i) // 1000 if i >= 1000 else int(i)) for i in np.unique(ids) if i != 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory, cityscapes_sample):
    root = tmp_path_factory.mktemp("cs_eval")
    raw = root / "raw"
    make_cityscapes_raw(raw, cityscapes_sample)
    src = np.asarray(Image.open(raw / "gtFine" / "val" / "dummy" / "dummy_000000_000000_gtFine_instanceIds.png")).astype(np.int64)
    label = np.asarray(Image.open(raw / "gtFine" / "val" / "dummy" / "dummy_000000_000000_gtFine_labelIds.png"))
    gt_dir = root / "gtFine" / "val"
    rng = np.random.default_rng(7)
    preds = {}
    for k in range(8):
        name = f"dummy_{k:06d}_000019"
        city = gt_dir / "dummy"
        city.mkdir(parents=True, exist_ok=True)
        for suffix in ("instanceIds", "labelIds"):
            shutil.copy(raw / "gtFine" / "val" / "dummy" / f"dummy_000000_000000_gtFine_{suffix}.png",
                        city / f"{name}_gtFine_{suffix}.png")
        p = _perturb(src, k, rng)
        scores = {i: float(np.round(rng.uniform(0.05, 0.99), 4)) for i in _cats_of(p)}
        preds[name] = (p, scores)
    return gt_dir, preds, src, label


def _write_prediction_json(folder, preds, *, train_ids):
    (folder / "pred").mkdir(parents=True, exist_ok=True)
    anns = []
    for name, (p, scores) in preds.items():
        write_png(folder / "pred" / f"{name}.png", p)
        segs = []
        for i, lid in _cats_of(p).items():
            s = {"id": i, "category_id": TRAIN_OF[lid] if train_ids else lid}
            if lid in THINGS:
                s["score"] = scores[i]
            segs.append(s)
        anns.append({"image_id": f"{name}_leftImg8bit", "file_name": f"{name}.png", "segments_info": segs})
    path = folder / "pred.json"
    path.write_text(json.dumps({"annotations": anns}))
    return path


def _reference(tmp, gt_dir, preds):
    """cityscapesScripts on submission files written here, straight from the id maps."""
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as ie
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as pe

    sub = tmp / "ref_sub"
    (sub / "m").mkdir(parents=True)
    txts, pngs, gts, gls = [], [], [], []
    for name, (p, scores) in sorted(preds.items()):
        lines = []
        for i, lid in _cats_of(p).items():
            if lid in THINGS:
                Image.fromarray((p == i).astype(np.uint8)).save(sub / "m" / f"{name}_{i}.png")
                lines.append(f"m/{name}_{i}.png {lid} {scores[i]}\n")
        (sub / f"{name}.txt").write_text("".join(lines))
        Image.fromarray(np.where(p >= 1000, p // 1000, p).astype(np.uint8)).save(sub / f"{name}_sem.png")
        txts.append(str(sub / f"{name}.txt"))
        pngs.append(str(sub / f"{name}_sem.png"))
        gts.append(str((gt_dir / "dummy" / f"{name}_gtFine_instanceIds.png").resolve()))
        gls.append(str(gt_dir / "dummy" / f"{name}_gtFine_labelIds.png"))
    a = copy.deepcopy(ie.args)
    a.predictionPath, a.predictionWalk = os.path.abspath(sub), None
    a.gtInstancesFile, a.JSONOutput, a.quiet = str(tmp / "ref_gtInstances.json"), False, True
    b = copy.deepcopy(pe.args)
    b.JSONOutput, b.quiet = False, True
    cwd = os.getcwd()
    os.chdir(tmp)
    try:  # numpy-2 patches only (np.in1d, JSON of numpy ints); the evaluation is theirs
        with contextlib.redirect_stdout(io.StringIO()), cityscapes_scripts_compat():
            inst = ie.evaluateImgLists(txts, gts, a)
            pix = pe.evaluateImgLists(pngs, gls, b)
    finally:
        os.chdir(cwd)
    return inst, pix


def _same(a, b):
    if a is None:
        return b is None or math.isnan(b)
    return a == pytest.approx(float(b), abs=1e-12, rel=0)


@pytest.fixture(scope="module")
def evaluated(data, tmp_path_factory):
    """Ours (train-id predictions) and the direct cityscapesScripts run, once."""
    gt_dir, preds, _, _ = data
    tmp = tmp_path_factory.mktemp("cs_eval_run")
    pred_json = _write_prediction_json(tmp, preds, train_ids=True)
    return pred_json, evaluate_cityscapes_official(gt_dir, pred_json), _reference(tmp, gt_dir, preds)


def test_equals_cityscapesscripts(evaluated):
    _, ours, (inst, pix) = evaluated
    assert ours["num_images"] == 8
    assert _same(ours["instance"]["ap"], inst["averages"]["allAp"])
    assert _same(ours["instance"]["ap50"], inst["averages"]["allAp50%"])
    for name, v in inst["averages"]["classes"].items():
        assert _same(ours["instance"]["per_class"][name]["ap"], v["ap"]), name
        assert _same(ours["instance"]["per_class"][name]["ap50"], v["ap50%"]), name
    assert _same(ours["semantic"]["miou"], pix["averageScoreClasses"])
    assert _same(ours["semantic"]["iiou"], pix["averageScoreInstClasses"])
    for name, v in ours["semantic"]["per_class_iou"].items():
        assert _same(v, pix["classScores"][name]), name
    # The perturbations make real errors: not perfect, but cars are found.
    car = ours["instance"]["per_class"]["car"]
    assert 0.2 < car["ap"] < 1.0 and ours["semantic"]["miou"] < 1.0


def test_label_id_predictions_give_the_same_numbers(data, evaluated, tmp_path):
    gt_dir, preds, _, _ = data
    pred_json = _write_prediction_json(tmp_path, preds, train_ids=False)
    assert evaluate_cityscapes_official(gt_dir, pred_json) == evaluated[1]


def test_miou_equals_the_benchmark_rule_in_numpy(data, evaluated):
    _, preds, _, label = data
    ours = evaluated[1]
    from cityscapesscripts.helpers.labels import labels

    ignored = [lab.id for lab in labels if lab.ignoreInEval and lab.id >= 0]
    ious = []
    for name, lid, _, _ in CITYSCAPES_CLASSES:
        tp = fn = fp = 0
        for p, _ in preds.values():
            pl = np.where(p >= 1000, p // 1000, p)
            g = label
            tp += int(((g == lid) & (pl == lid)).sum())
            fn += int(((g == lid) & (pl != lid)).sum())
            fp += int(((pl == lid) & (g != lid) & ~np.isin(g, ignored)).sum())
        iou = tp / (tp + fp + fn) if tp + fp + fn else None
        got = ours["semantic"]["per_class_iou"][name]
        assert (iou is None and got is None) or got == pytest.approx(iou, abs=1e-12, rel=0), name
        if iou is not None:
            ious.append(iou)
    assert ours["semantic"]["miou"] == pytest.approx(sum(ious) / len(ious), abs=1e-12)


def test_perfect_prediction_scores_one(data, tmp_path):
    gt_dir, preds, src, _ = data
    small = tmp_path / "gt"
    (small / "dummy").mkdir(parents=True)
    for name in list(preds)[:2]:
        for f in (gt_dir / "dummy").glob(f"{name}_*"):
            shutil.copy(f, small / "dummy" / f.name)
    p = _perturb(src, 0, None)
    perfect = {n: (p, {i: 0.9 for i in _cats_of(p)}) for n in list(preds)[:2]}
    ours = evaluate_cityscapes_official(small, _write_prediction_json(tmp_path, perfect, train_ids=True))
    for name in ("car", "person", "rider"):
        assert ours["instance"]["per_class"][name]["ap"] == 1.0
    assert ours["instance"]["per_class"]["bus"]["ap"] is None  # no GT, no prediction
    present = {"road", "building", "vegetation", "sky", "person", "rider", "car"}
    assert {n for n, v in ours["semantic"]["per_class_iou"].items() if v is not None} == present
    assert ours["semantic"]["miou"] == 1.0


def test_cli_and_errors(data, evaluated, tmp_path):
    gt_dir, preds, _, _ = data
    pred_json, direct, _ = evaluated
    out = tmp_path / "res.json"
    with contextlib.redirect_stdout(io.StringIO()) as text:
        rc = main(["evaluate", "--dataset", "cityscapes", "--instance", "--miou", "--cityscapes-gt",
                   str(gt_dir), "--pred-json", str(pred_json), "--output", str(out), "--no-progress"])
    assert rc == 0, text.getvalue()
    res = json.loads(out.read_text())
    assert res["cityscapes"] == json.loads(json.dumps(direct))
    assert "AP50" in text.getvalue() and "car" in text.getvalue()
    # Errors: a GT image without prediction, a thing without score, no --cityscapes-gt.
    pred = json.loads(pred_json.read_text())
    pred["annotations"].pop(3)
    (tmp_path / "short.json").write_text(json.dumps(pred))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["evaluate", "--dataset", "cityscapes", "--instance", "--cityscapes-gt", str(gt_dir),
                   "--pred-json", str(tmp_path / "short.json"), "--pred-folder", str(pred_json.parent / "pred")])
    assert rc == 1 and "no prediction for 1 ground-truth image" in err.getvalue()
    pred = json.loads(pred_json.read_text())
    for s in pred["annotations"][0]["segments_info"]:
        s.pop("score", None)
    (tmp_path / "noscore.json").write_text(json.dumps(pred))
    with pytest.raises(PanopticEvaluationError, match="has no 'score'"):
        evaluate_cityscapes_official(gt_dir, tmp_path / "noscore.json", pred_json.parent / "pred")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["evaluate", "--dataset", "cityscapes", "--instance", "--pred-json", str(pred_json)])
    assert rc == 2 and "--cityscapes-gt" in err.getvalue()
