"""PQ on the real GT + prediction test set equals the official panopticapi."""

from __future__ import annotations

import pickle
import random

import pytest

from eval_helpers import load_testdata, oracle_pq_compute
from kmax_deeplab.evaluation import PanopticEvaluator, PanopticQualityAccumulator, pq_compute

# SOURCES.md: cocodataset/panopticapi pq_compute @7bb4655 on pq_gt_pred_deeplab_testdata.
OFFICIAL = {
    "All": (0.6740486628641355, 0.6834387673557568, 0.8205128205128206, 6),
    "Things": (0.5769675073143916, 0.5910526640518237, 0.7307692307692308, 4),
    "Stuff": (0.868210973963623, 0.868210973963623, 1.0, 2),
}
OFFICIAL_PER_CLASS = {
    1: (0.676087523396742, 0.7324281503464706, 0.9230769230769231),
    2: (0.0, 0.0, 0.0),
    3: (0.7453531598513011, 0.7453531598513011, 1.0),
    4: (0.8576779026217228, 0.8576779026217228, 1.0),
    5: (0.9910687880759449, 0.9910687880759449, 1.0),
    6: (0.7741046032391015, 0.7741046032391015, 1.0),
}


def _assert_same(ours, ref, tol=1e-12):
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"]
        for k in ("pq", "sq", "rq"):
            assert ours[group][k] == pytest.approx(ref[group][k], abs=tol, rel=0), (group, k)
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cid, r in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert ours["per_class"][cid][k] == pytest.approx(r[k], abs=tol, rel=0), (cid, k)


@pytest.fixture(scope="module")
def files(pq_testdata):
    return pq_testdata / "coco_gt.json", pq_testdata / "coco_pred.json"


@pytest.fixture(scope="module")
def file_result(files):
    return pq_compute(*files, num_workers=0, progress=False, backend="kmax")


def test_matches_panopticapi_oracle(files, file_result):
    _assert_same(file_result, oracle_pq_compute(*files))


def test_matches_official_numbers(file_result):
    for group, (pq, sq, rq, n) in OFFICIAL.items():
        r = file_result[group]
        assert (r["n"], r["pq"], r["sq"], r["rq"]) == pytest.approx((n, pq, sq, rq), abs=1e-12)
    for cid, (pq, sq, rq) in OFFICIAL_PER_CLASS.items():
        r = file_result["per_class"][cid]
        assert (r["pq"], r["sq"], r["rq"]) == pytest.approx((pq, sq, rq), abs=1e-12)
    # Counts behind the numbers: 14 person GT (12 matched, 2 missed), 1 missed umbrella.
    assert (file_result["per_class"][1]["tp"], file_result["per_class"][1]["fn"]) == (12, 2)
    assert file_result["per_class"][2]["fn"] == 1


def test_worker_processes_give_the_same_result(files, file_result):
    from kmax_deeplab.evaluation import evaluate_files

    multi = evaluate_files(*files, num_workers=2, chunk_size=1, progress=False,
                           backend="kmax")["panoptic"]
    assert multi == file_result


def test_bird_alone_official_number(pq_testdata, tmp_path):
    import json

    gt = json.loads((pq_testdata / "coco_gt.json").read_text())
    gt["annotations"] = [a for a in gt["annotations"] if a["file_name"] == "bird.png"]
    path = tmp_path / "bird_gt.json"
    path.write_text(json.dumps(gt))
    r = pq_compute(path, pq_testdata / "coco_pred.json", pq_testdata / "coco_gt",
                   pq_testdata / "coco_pred", num_workers=0, progress=False)
    assert r["All"]["n"] == 3
    assert r["All"]["pq"] == pytest.approx(0.8647, abs=5e-5)  # SOURCES.md: "Bird alone gives All 0.8647"
    _assert_same(r, oracle_pq_compute(path, pq_testdata / "coco_pred.json", pq_testdata / "coco_gt",
                                      pq_testdata / "coco_pred"))


def test_accumulator_any_order_and_merge_equal_file_result(pq_testdata, file_result):
    categories, images = load_testdata(pq_testdata)
    for seed in range(3):
        order = images[:]
        random.Random(seed).shuffle(order)
        acc = PanopticQualityAccumulator(categories)
        for image_id, gt, gt_seg, pred, pred_seg in order:
            acc.update(gt, gt_seg, pred, pred_seg, image_id=image_id)
        assert acc.compute() == file_result  # bit-exact: IoU sums are exact
    halves = [PanopticQualityAccumulator(categories) for _ in range(2)]
    for i, (image_id, gt, gt_seg, pred, pred_seg) in enumerate(images):
        halves[i % 2].update(gt, gt_seg, pred, pred_seg, image_id=image_id)
    # State travels through pickle as with torch.distributed.all_gather_object.
    state = pickle.loads(pickle.dumps(halves[1].state_dict()))
    halves[0].merge_state_dict(state)
    assert halves[0].compute() == file_result
    assert halves[0].num_images == 4


def test_combined_evaluator_pq_equals_file_result(pq_testdata, file_result):
    categories, images = load_testdata(pq_testdata)
    ev = PanopticEvaluator(categories, semantic=True)
    for image_id, gt, gt_seg, pred, pred_seg in reversed(images):
        ev.update(gt, gt_seg, pred, pred_seg, image_id=image_id)
    assert ev.compute()["panoptic"] == file_result
