"""Label-map mIoU / per-class IoU / pixel accuracy == mmsegmentation 0.30's definition.

Oracles: a hand-computed case; mmseg 0.30's own ``intersect_and_union`` /
``total_area_to_metrics`` outputs recorded on seeded maps
(``tests/data/semantic/mmseg_miou_golden.json``, made by ``tools/record_mmseg_miou.py``);
and randomised cases against a line-by-line re-statement of mmseg's torch code.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kmax_deeplab.evaluation.errors import SemanticEvaluationError
from kmax_deeplab.evaluation.semantic import SemSegAccumulator, intersect_and_union

GOLDEN = Path(__file__).parent / "data" / "semantic" / "mmseg_miou_golden.json"

PRED = np.array([[0, 1, 1], [1, 1, 0]])
LABEL = np.array([[0, 0, 1], [1, 2, 255]])


def _check_hand(m):
    # valid (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,1); class 3 absent from both.
    assert m["IoU"][:3].tolist() == [0.5, 0.5, 0.0]  # 1/2, 2/4, 0/1
    assert math.isnan(m["IoU"][3]) and math.isnan(m["Acc"][3])
    assert m["Acc"][:3].tolist() == [0.5, 1.0, 0.0]
    assert m["mIoU"] == pytest.approx(1 / 3) and m["mAcc"] == pytest.approx(0.5)
    assert m["aAcc"] == pytest.approx(3 / 5)
    assert m["per_class_iou"] == {"a": 0.5, "b": 0.5, "c": 0.0, "d": None}


def test_hand_computed():
    acc = SemSegAccumulator(4, class_names=["a", "b", "c", "d"])
    acc.update(PRED, LABEL)
    _check_hand(acc.compute())
    assert [a.tolist() for a in intersect_and_union(PRED, LABEL, 4)] == [
        [1, 2, 0, 0], [2, 4, 1, 0], [1, 4, 0, 0], [2, 2, 1, 0]]
    # Values outside [0, K) fall in no class bin (mmseg's torch.histc drops them).
    out = intersect_and_union(np.array([[4, -1, 0]]), np.array([[4, 4, 0]]), 4)
    assert [a.tolist() for a in out] == [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]


def test_hand_computed_reduce_zero_label():
    raw = np.array([[1, 1, 2], [2, 3, 0]], dtype=np.uint8)  # ADE20K: 0 = "other" -> ignore
    acc = SemSegAccumulator(4, reduce_zero_label=True, class_names=["a", "b", "c", "d"])
    acc.update(PRED, raw)
    _check_hand(acc.compute())
    # raw 255 stays ignored under the reduction (mmseg: 255 -> 254 -> 255).
    a = intersect_and_union(np.zeros((1, 2), int), np.array([[255, 1]], np.uint8), 2,
                            reduce_zero_label=True)
    assert a[3].tolist() == [1, 0]


def _mmseg_restated(pred, label, k, ignore, label_map, reduce):
    """mmseg 0.30 ``intersect_and_union`` restated with torch.histc."""
    pred = torch.from_numpy(pred.copy())
    label = torch.from_numpy(label.astype(np.int64))
    copy = label.clone()
    for old, new in label_map.items():
        label[copy == old] = new
    if reduce:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    mask = label != ignore
    pred, label = pred[mask], label[mask]
    inter = pred[pred == label]
    h = [torch.histc(t.float(), bins=k, min=0, max=k - 1).double() for t in (inter, pred, label)]
    return h[0], h[1] + h[2] - h[0], h[1], h[2]


@pytest.mark.parametrize("seed", range(8))
def test_random_against_restated_mmseg(seed):
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(2, 30))
    reduce = bool(seed % 2)
    label_map = {int(rng.integers(0, k)): int(rng.integers(0, k))} if seed % 3 == 0 else {}
    acc = SemSegAccumulator(k, reduce_zero_label=reduce, label_map=label_map)
    tot = [torch.zeros(k, dtype=torch.float64) for _ in range(4)]
    for _ in range(3):
        h, w = (int(v) for v in rng.integers(1, 25, size=2))
        top = int(rng.integers(1, k + 1))  # some classes absent from both maps
        pred = rng.integers(0, top, size=(h, w))
        label = rng.integers(0, top + 1, size=(h, w))
        label[rng.random((h, w)) < 0.2] = 255
        label[rng.random((h, w)) < 0.05] = k + 7
        agree = rng.random((h, w)) < 0.5
        target = label - 1 if reduce else label
        ok = agree & (target >= 0) & (target < k)
        pred[ok] = target[ok]
        acc.update(pred, label)
        for t, a in zip(tot, _mmseg_restated(pred, label, k, 255, label_map, reduce)):
            t += a
    assert acc.areas.tolist() == [t.long().tolist() for t in tot]
    m = acc.compute()
    iou, a_acc = (tot[0] / tot[1]).numpy(), (tot[0] / tot[3]).numpy()
    np.testing.assert_array_equal(np.isnan(m["IoU"]), np.isnan(iou))
    np.testing.assert_allclose(m["IoU"], iou, rtol=0, atol=1e-15)
    np.testing.assert_allclose(m["Acc"], a_acc, rtol=0, atol=1e-15)
    if tot[3].sum() > 0:
        assert m["aAcc"] == pytest.approx(float(tot[0].sum() / tot[3].sum()), abs=1e-15)
    if not np.isnan(iou).all():
        assert m["mIoU"] == pytest.approx(float(np.nanmean(iou)), abs=1e-15)


def test_mmseg_golden():
    data = json.loads(GOLDEN.read_text())
    for case in data["cases"]:
        lm = {int(a): b for a, b in case["label_map"].items()}
        acc = SemSegAccumulator(case["num_classes"], reduce_zero_label=case["reduce_zero_label"],
                                label_map=lm)
        for p, g in zip(case["preds"], case["labels"]):
            acc.update(np.array(p, dtype=np.int64), np.array(g, dtype=np.uint8))
        assert acc.areas.tolist() == case["areas"], case["seed"]
        m = acc.compute()
        for key in ("IoU", "Acc"):
            want = np.array([np.nan if v is None else v for v in case[key]])
            np.testing.assert_allclose(m[key], want, rtol=1e-12, atol=0, err_msg=f"{case['seed']} {key}")
        for key in ("aAcc", "mIoU", "mAcc"):
            assert m[key] == pytest.approx(case[key], rel=1e-12), (case["seed"], key)
    assert any(v is None for c in data["cases"] for v in c["IoU"])  # absent classes covered


def test_merge_state_dict_and_errors():
    rng = np.random.default_rng(0)
    maps = [(rng.integers(0, 5, (7, 9)), rng.integers(0, 6, (7, 9))) for _ in range(4)]
    whole, a, b = (SemSegAccumulator(5) for _ in range(3))
    for i, (p, g) in enumerate(maps):
        whole.update(p, g)
        (a if i % 2 else b).update(p, g)
    b2 = SemSegAccumulator(5)
    b2.load_state_dict(pickle.loads(pickle.dumps(b.state_dict())))
    assert a.merge(b2).areas.tolist() == whole.areas.tolist() and a.num_images == 4
    with pytest.raises(ValueError, match="different settings"):
        a.merge(SemSegAccumulator(5, reduce_zero_label=True))
    with pytest.raises(SemanticEvaluationError, match=r"image 'x.png': prediction shape \(2, 3\)"):
        whole.update(np.zeros((2, 3), int), np.zeros((3, 2), int), image_id="x.png")
    with pytest.raises(SemanticEvaluationError, match="dtype float"):
        whole.update(np.zeros((2, 3)), np.zeros((2, 3), int))


def test_kmax_evaluate_task_semantic(tmp_path, capsys):
    """``kmax evaluate --task semantic`` on PNG folders == the accumulator (hand case)."""
    from PIL import Image

    from kmax_deeplab.cli import main

    (tmp_path / "gt" / "a").mkdir(parents=True)
    (tmp_path / "pred" / "a").mkdir(parents=True)
    raw = np.array([[1, 1, 2], [2, 3, 0]], dtype=np.uint8)  # ADE20K-style, see the hand case
    Image.fromarray(raw).save(tmp_path / "gt" / "a" / "x.png")
    Image.fromarray(PRED.astype(np.uint8)).save(tmp_path / "pred" / "a" / "x.png")
    out = tmp_path / "r.json"
    code = main(["evaluate", "--task", "semantic", "--gt-folder", str(tmp_path / "gt"), "--pred-folder",
                 str(tmp_path / "pred"), "--num-classes", "4", "--reduce-zero-label", "--output", str(out)])
    assert code == 0
    assert "aAcc 60.00  mIoU 33.33  mAcc 50.00  (1 images)" in capsys.readouterr().out
    res = json.loads(out.read_text())["semantic"]
    assert res["IoU"] == [0.5, 0.5, 0.0, None] and res["mIoU"] == pytest.approx(1 / 3)
    Image.fromarray(raw).save(tmp_path / "gt" / "y.png")
    code = main(["evaluate", "--task", "semantic", "--gt-folder", str(tmp_path / "gt"), "--pred-folder",
                 str(tmp_path / "pred"), "--dataset", "ade20k"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "y.png: no prediction" in err
