"""Randomised parity with the official panopticapi per-image core.

Predictions (and some ground truths) are built from the REAL ground truth in
tests/data by perturbation: merge, split, erode, dilate, drop, relabel, shift,
segments on crowd and VOID regions, id 0 used as a real predicted segment, extra
crowd segments of one category (panopticapi remembers only the last), and GT that
lists id 0 (which we reject, see below). Every case is evaluated by panopticapi-lite's ``pq_compute_single_core``
(the oracle) and by our accumulator; counts must be equal and IoU sums equal to 1e-12.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from eval_helpers import read_ids, write_png
from kmax_deeplab.evaluation import PanopticEvaluationError, PanopticQualityAccumulator, pq_average

NUM_CASES = 300


def _sources(test_data: Path):
    """(categories, [(gt ids, segments_info)]) per real GT set."""
    out = []
    for folder, json_name, png_dir, cat_file in (
        ("pq_gt_pred_deeplab_testdata", "coco_gt.json", "coco_gt", None),
        ("coco_panoptic_panopticapi_sample", "sample_data/panoptic_examples.json",
         "sample_data/panoptic_examples", None),
        ("cityscapes_panoptic_format_deeplab2_dummy", "gtFine/cityscapes_panoptic_dummy_trainId.json",
         "gtFine/cityscapes_panoptic_dummy_trainId", "panoptic_cityscapes_categories.json"),
    ):
        root = test_data / folder
        data = json.loads((root / json_name).read_text())
        if cat_file:  # Cityscapes trainId data: category id = position in the list
            cats = [dict(c, id=i) for i, c in enumerate(json.loads((root / cat_file).read_text()))]
        else:
            cats = data["categories"]
        images = [(read_ids(root / png_dir / a["file_name"]), a["segments_info"]) for a in data["annotations"]]
        out.append((cats, images))
    return out


def _fresh_id(rng, used):
    while True:
        i = int(rng.integers(1, 1 << 24))
        if i not in used:
            used.add(i)
            return i


def _make_case(rng, cats, images):
    ids_full, segs_full = images[rng.integers(len(images))]
    h, w = ids_full.shape
    ch, cw = min(h, int(rng.integers(24, 72))), min(w, int(rng.integers(24, 72)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    gt = ids_full[y : y + ch, x : x + cw].copy()
    seg_by_id = {s["id"]: s for s in segs_full}
    cat_ids = [c["id"] for c in cats]
    thing_ids = [c["id"] for c in cats if c["isthing"] == 1]
    gt_info = {}
    for i in np.unique(gt).tolist():
        if i == 0:
            continue
        s = seg_by_id[i]
        gt_info[i] = {"id": i, "category_id": s["category_id"], "iscrowd": int(s.get("iscrowd", 0))}
    # GT perturbations: drop to VOID, make crowd, add a second crowd of a category.
    for i in list(gt_info):
        r = rng.random()
        if r < 0.08 and len(gt_info) > 1:
            gt[gt == i] = 0
            del gt_info[i]
        elif r < 0.2:
            gt_info[i]["iscrowd"] = 1
    if rng.random() < 0.15 and thing_ids:  # extra crowd rectangles, same category
        c = int(rng.choice(thing_ids))
        used = set(gt_info) | {0}
        for _ in range(2):
            yy, xx = int(rng.integers(0, ch)), int(rng.integers(0, cw))
            nid = _fresh_id(rng, used)
            gt[yy : yy + int(rng.integers(3, 20)), xx : xx + int(rng.integers(3, 20))] = nid
            gt_info[nid] = {"id": nid, "category_id": c, "iscrowd": 1}
    gt_info = {i: s for i, s in gt_info.items() if (gt == i).any()}
    gt_lists_zero = bool((gt == 0).any()) and rng.random() < 0.04
    if gt_lists_zero:
        gt_info[0] = {"id": 0, "category_id": int(rng.choice(cat_ids)), "iscrowd": 0}

    # Prediction: GT with fresh ids, then random edits.
    used = {0}
    remap = {i: _fresh_id(rng, used) for i in gt_info if i != 0}
    pred = np.zeros_like(gt)
    pred_cat = {}
    for g, p in remap.items():
        pred[gt == g] = p
        pred_cat[p] = gt_info[g]["category_id"]
    if gt_lists_zero:
        zid = _fresh_id(rng, used)
        pred[gt == 0] = zid
        pred_cat[zid] = gt_info[0]["category_id"]
    zero_is_segment = False
    for _ in range(int(rng.integers(1, 5))):
        present = [i for i in np.unique(pred).tolist() if i != 0]
        op = rng.choice(["merge", "split", "erode", "dilate", "drop", "relabel", "shift",
                         "on_void", "on_crowd", "id0", "rect"])
        if op == "merge" and len(present) >= 2:
            a, b = rng.choice(present, 2, replace=False)
            pred[pred == b] = a
        elif op == "split" and present:
            a = int(rng.choice(present))
            nid = _fresh_id(rng, used)
            yy, xx = np.nonzero(pred == a)
            cut = int(rng.integers(xx.min(), xx.max() + 1))
            pred[(pred == a) & (np.arange(cw)[None, :] > cut)] = nid
            pred_cat[nid] = pred_cat[a] if rng.random() < 0.8 else int(rng.choice(cat_ids))
        elif op == "erode" and present:
            a = int(rng.choice(present))
            m = pred == a
            pred[m & ~ndimage.binary_erosion(m, iterations=int(rng.integers(1, 4)))] = 0
        elif op == "dilate" and present:
            a = int(rng.choice(present))
            m = ndimage.binary_dilation(pred == a, iterations=int(rng.integers(1, 6)))
            pred[m] = a
        elif op == "drop" and present:
            pred[pred == int(rng.choice(present))] = 0
        elif op == "relabel" and present:
            pred_cat[int(rng.choice(present))] = int(rng.choice(cat_ids))
        elif op == "shift":
            dy, dx = (int(v) for v in rng.integers(-6, 7, size=2))
            shifted = np.zeros_like(pred)
            src = pred[max(0, -dy) : ch - max(0, dy), max(0, -dx) : cw - max(0, dx)]
            shifted[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
            pred = shifted
        elif op in ("on_void", "on_crowd"):
            if op == "on_void":
                region = gt == 0
                c = int(rng.choice(cat_ids))
            else:
                crowds = [i for i, s in gt_info.items() if s["iscrowd"] == 1]
                if not crowds:
                    continue
                g = int(rng.choice(crowds))
                region, c = gt == g, gt_info[g]["category_id"]
            if not region.any():
                continue
            # Mostly-on-region blob: the region, optionally grown or with a margin.
            if rng.random() < 0.5:
                region = ndimage.binary_dilation(region, iterations=int(rng.integers(1, 4)))
            nid = _fresh_id(rng, used)
            pred[region] = nid
            pred_cat[nid] = c
        elif op == "id0" and present:
            a = int(rng.choice(present))
            pred[pred == a] = 0  # pre-existing VOID pixels join segment 0
            pred_cat[0] = pred_cat[a]
            zero_is_segment = True
        elif op == "rect":
            yy, xx = int(rng.integers(0, ch)), int(rng.integers(0, cw))
            nid = _fresh_id(rng, used)
            pred[yy : yy + int(rng.integers(2, 30)), xx : xx + int(rng.integers(2, 30))] = nid
            pred_cat[nid] = int(rng.choice(cat_ids))
    pred_present = np.unique(pred).tolist()
    pred_info = [{"id": i, "category_id": pred_cat[i]} for i in pred_present
                 if i != 0 or zero_is_segment and 0 in pred_cat]
    gt_list = [dict(s, area=int((gt == i).sum())) for i, s in gt_info.items()]
    rng.shuffle(gt_list)  # segments_info order matters for panopticapi's crowd rule
    return gt, gt_list, pred, pred_info


def _oracle(tmp: Path, case_id: int, gt, gt_info, pred, pred_info, categories):
    from panopticapi.evaluation import pq_compute_single_core

    name = f"{case_id}.png"
    write_png(tmp / "gt" / name, gt)
    write_png(tmp / "pred" / name, pred)
    gt_ann = {"image_id": case_id, "file_name": name, "segments_info": gt_info}
    pred_ann = {"image_id": case_id, "file_name": name, "segments_info": [dict(s) for s in pred_info]}
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute_single_core(0, [(gt_ann, pred_ann)], str(tmp / "gt"), str(tmp / "pred"),
                                      {c["id"]: c for c in categories})


def test_random_perturbations_match_panopticapi(tmp_path, pq_testdata):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    sources = _sources(pq_testdata.parent)
    rng = np.random.default_rng(20240601)
    totals = [(PanopticQualityAccumulator(cats), {}) for cats, _ in sources]
    seen = {"zero_segment": 0, "crowd": 0, "gt_zero": 0}
    for case in range(NUM_CASES):
        k = case % len(sources)
        cats, images = sources[k]
        gt, gt_info, pred, pred_info = _make_case(rng, cats, images)
        acc = PanopticQualityAccumulator(cats)
        if any(s["id"] == 0 for s in gt_info):
            # panopticapi counts listed GT id 0 as VOID and as a segment (zero unions):
            # we reject such ground truth with a clear error instead.
            with pytest.raises(PanopticEvaluationError, match="lists id 0"):
                acc.update(gt, gt_info, pred, pred_info, image_id=case)
            seen["gt_zero"] += 1
            continue
        ref = _oracle(tmp_path, case, gt, gt_info, pred, pred_info, cats)
        acc.update(gt, gt_info, pred, pred_info, image_id=case)
        ours = acc.per_class_stats()
        for cid in ours:
            r = ref.pq_per_cat[cid] if cid in ref.pq_per_cat else None
            want = (0, 0, 0, 0.0) if r is None else (r.tp, r.fp, r.fn, float(r.iou))
            got = ours[cid]
            assert (got["tp"], got["fp"], got["fn"]) == want[:3], (case, cid)
            assert got["iou"] == pytest.approx(want[3], abs=1e-12, rel=0), (case, cid)
        totals[k][0].merge(acc)
        for cid, r in ref.pq_per_cat.items():
            t = totals[k][1].setdefault(cid, [0, 0, 0, 0.0])
            t[0] += r.tp; t[1] += r.fp; t[2] += r.fn; t[3] += r.iou  # noqa: E702
        seen["zero_segment"] += any(s["id"] == 0 for s in pred_info)
        seen["crowd"] += any(s["iscrowd"] for s in gt_info)
    # The generator really exercised the edge cases.
    tp = sum(int(a.tp.sum()) for a, _ in totals)
    fp = sum(int(a.fp.sum()) for a, _ in totals)
    fn = sum(int(a.fn.sum()) for a, _ in totals)
    assert tp >= 100 and fp >= 50 and fn >= 50, (tp, fp, fn)
    assert seen["zero_segment"] >= 10 and seen["crowd"] >= 30 and seen["gt_zero"] >= 2, seen
    # Aggregated All/Things/Stuff over all cases of each source equal the oracle's averages.
    for acc, ref_totals in totals:
        ref_stats = {cid: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0} for cid in acc.categories}
        for cid, (tp, fp, fn, iou) in ref_totals.items():
            ref_stats[cid] = {"tp": tp, "fp": fp, "fn": fn, "iou": iou}
        ours, ref = acc.compute(), pq_average(ref_stats, acc.categories)
        for group in ("All", "Things", "Stuff"):
            assert ours[group]["n"] == ref[group]["n"]
            for key in ("pq", "sq", "rq"):
                assert ours[group][key] == pytest.approx(ref[group][key], abs=1e-12, rel=0)
