"""``kmax evaluate --instances-gt/--instances-results``: mask AP equal to pycocotools' own on a
COCO instances JSON built from the real panopticapi sample; bad files fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SAMPLE = Path(__file__).resolve().parent / "data" / "coco_panoptic_panopticapi_sample"


def _instances(tmp_path: Path) -> tuple[Path, Path]:
    """GT: the thing segments of the 2 sample images; results: some of them, eroded, with scores."""
    from pycocotools import mask as mask_utils

    pan = json.loads((SAMPLE / "sample_data/panoptic_examples.json").read_text())
    cats = [c for c in json.loads((SAMPLE / "panoptic_coco_categories.json").read_text()) if c["isthing"]]
    thing_ids = {c["id"] for c in cats}
    images, anns, results = [], [], []
    rng = np.random.default_rng(0)
    for k, a in enumerate(pan["annotations"]):
        rgb = np.asarray(Image.open(SAMPLE / "sample_data/panoptic_examples" / a["file_name"]).convert("RGB"))
        rgb = rgb.astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        images.append({"id": a["image_id"], "height": ids.shape[0], "width": ids.shape[1], "file_name": a["file_name"]})
        for s in a["segments_info"]:
            if s["category_id"] not in thing_ids:
                continue
            m = np.asfortranarray((ids == s["id"]).astype(np.uint8))
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": a["image_id"], "category_id": s["category_id"],
                         "segmentation": rle, "area": int(m.sum()), "iscrowd": s["iscrowd"], "bbox": s["bbox"]})
            if rng.random() < 0.7:
                pred = m.copy()
                pred[:: 3] = 0  # damage it: IoU below 1
                r = mask_utils.encode(np.asfortranarray(pred))
                r["counts"] = r["counts"].decode("ascii")
                results.append({"image_id": a["image_id"], "category_id": s["category_id"],
                                "score": float(rng.random()), "segmentation": r})
    gt = tmp_path / "instances.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    res = tmp_path / "results.json"
    res.write_text(json.dumps(results))
    return gt, res


def test_mask_ap_equals_pycocotools(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from kmax_deeplab.cli import main

    gt, res = _instances(tmp_path)
    assert main(["evaluate", "--instances-gt", str(gt), "--instances-results", str(res), "--output",
                 str(tmp_path / "ap.json")]) == 0
    ours = json.loads((tmp_path / "ap.json").read_text())["segm"]
    coco = COCO(str(gt))
    ev = COCOeval(coco, coco.loadRes(str(res)), "segm")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ours["AP"] == pytest.approx(ev.stats[0] * 100, abs=1e-9) and ours["AR100"] == pytest.approx(ev.stats[8] * 100)
    assert 0 < ours["AP"] < 100  # damaged, partial predictions: a non-trivial AP


@pytest.mark.parametrize("break_it, message", [
    (lambda g, r: g["annotations"][2].pop("segmentation"), "annotation 2 (id 3, image 142238) has no 'segmentation'"),
    (lambda g, r: g["annotations"][0].update(category_id=999), "annotation 0 (id 1, image 142238): unknown category_id 999"),
    (lambda g, r: r[0].update(category_id=999), "result 0 (image 142238): unknown category_id 999"),
])
def test_bad_instance_files_named_in_one_line(tmp_path, capsys, break_it, message):
    from kmax_deeplab.cli import main

    gt, res = _instances(tmp_path)
    g, r = json.loads(gt.read_text()), json.loads(res.read_text())
    break_it(g, r)
    gt.write_text(json.dumps(g))
    res.write_text(json.dumps(r))
    assert main(["evaluate", "--instances-gt", str(gt), "--instances-results", str(res)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
