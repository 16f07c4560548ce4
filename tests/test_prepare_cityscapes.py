"""``kmax prepare cityscapes`` equals cityscapesScripts' createPanopticImgs --use-train-id
on gtFine-format fixtures made from the real Cityscapes-format sample, resumes, and its
output reads back through the dataset class."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
from kmax_deeplab.data.prepare import cityscapes as cs_prepare
from kmax_deeplab.data.prepare import prepare_cityscapes
from prepare_fixtures import make_cityscapes_raw

pytest.importorskip("cityscapesscripts")


@pytest.fixture(scope="module")
def official(tmp_path_factory, cityscapes_sample):
    """The raw fixture and cityscapesScripts' own conversion of it."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    raw = tmp_path_factory.mktemp("cs_raw")
    make_cityscapes_raw(raw, cityscapes_sample)
    out = tmp_path_factory.mktemp("cs_official")
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(str(raw / "gtFine"), str(out), useTrainId=True, setNames=["train", "val"])
    return raw, out


def _copy_raw(raw, dst):
    shutil.copytree(raw, dst)
    return dst


def _ids(path):
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def _assert_same_as_official(root, out):
    for split in ("train", "val"):
        base = f"cityscapes_panoptic_{split}_trainId"
        ours = json.loads((root / "gtFine" / f"{base}.json").read_text())
        ref = json.loads((out / f"{base}.json").read_text())
        assert ours == ref
        for ann in ref["annotations"]:
            a = np.asarray(Image.open(root / "gtFine" / base / ann["file_name"]))
            b = np.asarray(Image.open(out / base / ann["file_name"]))
            assert a.shape == b.shape and (a == b).all(), ann["file_name"]


def test_equals_create_panoptic_imgs(official, tmp_path):
    raw, out = official
    root = _copy_raw(raw, tmp_path / "cs")
    summary = prepare_cityscapes(root, progress=False)
    assert {s: v["images"] for s, v in summary.items()} == {"train": 1, "val": 1}
    _assert_same_as_official(root, out)
    # The fixture exercises the rules: dropped ignoreInEval labels (ego vehicle, ground,
    # caravan instance), a thing crowd region, stuff, and instances of three classes.
    val = json.loads((root / "gtFine" / "cityscapes_panoptic_val_trainId.json").read_text())
    segs = val["annotations"][0]["segments_info"]
    ids = {s["id"] for s in segs}
    assert {1, 6, 29000}.isdisjoint(ids) and {24000, 25000, 24, 26}.issubset(ids)
    assert {s["id"]: s["iscrowd"] for s in segs if s["id"] in (24, 26, 24000, 7)} == \
        {24: 1, 26: 1, 24000: 0, 7: 0}


def test_semantic_train_ids_agree_with_panoptic(official, tmp_path):
    raw, _ = official
    root = _copy_raw(raw, tmp_path / "cs")
    prepare_cityscapes(root, progress=False)
    from cityscapesscripts.helpers.labels import id2label

    for split, name in (("val", "dummy_000000_000000"), ("train", "dummy_000001_000000")):
        sem = np.asarray(Image.open(root / "gtFine" / split / "dummy" / f"{name}_gtFine_labelTrainIds.png"))
        label_ids = np.asarray(Image.open(root / "gtFine" / split / "dummy" / f"{name}_gtFine_labelIds.png"))
        want = np.vectorize(lambda i: id2label[int(i)].trainId if id2label[int(i)].trainId >= 0 else 255)(label_ids)
        assert (sem == want).all()
        # and pixel for pixel the panoptic ground truth's category (255 where VOID)
        ann = [a for a in json.loads((root / "gtFine" / f"cityscapes_panoptic_{split}_trainId.json")
                                     .read_text())["annotations"] if a["image_id"] == name][0]
        pan = _ids(root / "gtFine" / f"cityscapes_panoptic_{split}_trainId" / ann["file_name"])
        from_pan = np.full(pan.shape, 255)
        for s in ann["segments_info"]:
            from_pan[pan == s["id"]] = s["category_id"]
        assert (sem == from_pan).all()
        assert set(np.unique(sem).tolist()) >= {0, 2, 8, 10, 11, 12, 13, 255}


def test_resumes_and_skips_valid_outputs(official, tmp_path, monkeypatch):
    raw, out = official
    root = _copy_raw(raw, tmp_path / "cs")
    calls = {"n": 0}
    real = cs_prepare.save_png

    def flaky(path, array):
        calls["n"] += 1
        if calls["n"] == 3:  # the first image of the second split
            raise KeyboardInterrupt
        real(path, array)

    monkeypatch.setattr(cs_prepare, "save_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_cityscapes(root, splits=["train", "val"], progress=False)
    assert not (root / "gtFine" / "cityscapes_panoptic_val_trainId.json").exists()
    assert not list((root / "gtFine").rglob("*.tmp"))  # nothing half-written
    monkeypatch.setattr(cs_prepare, "save_png", real)
    summary = prepare_cityscapes(root, progress=False)
    assert summary["train"]["converted"] == 0 and summary["val"]["converted"] == 1
    _assert_same_as_official(root, out)
    assert prepare_cityscapes(root, progress=False)["val"]["converted"] == 0
    # A damaged output is redone.
    png = root / "gtFine" / "cityscapes_panoptic_val_trainId" / "dummy_000000_000000_gtFine_panoptic.png"
    png.write_bytes(png.read_bytes()[:200])
    assert prepare_cityscapes(root, progress=False)["val"]["converted"] == 1
    _assert_same_as_official(root, out)


def test_reads_back_through_the_dataset_class(official, tmp_path):
    raw, _ = official
    root = _copy_raw(raw, tmp_path / "cs")
    prepare_cityscapes(root, progress=False)
    meta = get_dataset_meta("cityscapes")
    for split in ("train", "val"):
        ds = COCOPanopticDataset(root / "leftImg8bit" / split,
                                 root / "gtFine" / f"cityscapes_panoptic_{split}_trainId.json",
                                 root / "gtFine" / f"cityscapes_panoptic_{split}_trainId", meta)
        assert len(ds) == 1
        sample = ds[0]
        assert sample["image"].shape == (3, 800, 800)
        labels = sample["labels"].tolist()
        assert labels.count(13) == 6 and 11 in labels and 12 in labels  # cars, person, rider
        assert int(sample["is_crowd"].sum()) == 2  # the car and person crowd regions


def test_from_zip_archives_and_errors(official, tmp_path):
    import zipfile

    raw, out = official
    root = tmp_path / "cs"
    root.mkdir()
    for folder, archive in (("gtFine", "gtFine_trainvaltest.zip"),
                            ("leftImg8bit", "leftImg8bit_trainvaltest.zip")):
        with zipfile.ZipFile(root / archive, "w") as zf:
            zf.writestr("README", "official archives hold a README and a license")
            for p in sorted((raw / folder).rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(raw).as_posix())
    prepare_cityscapes(root, progress=False)
    _assert_same_as_official(root, out)
    assert not (root / "README").exists()
    with pytest.raises(cs_prepare.PrepareError, match="gtFine"):
        prepare_cityscapes(tmp_path / "nothing_here", progress=False)


def test_prepared_split_evaluates_pq_ap_miou_end_to_end(official, tmp_path):
    """prepare -> kmax evaluate with PQ, official AP and mIoU: GT as prediction scores 100."""
    from kmax_deeplab.cli import main

    raw, _ = official
    root = _copy_raw(raw, tmp_path / "cs")
    prepare_cityscapes(root, progress=False)
    gt = root / "gtFine" / "cityscapes_panoptic_val_trainId.json"
    anns = json.loads(gt.read_text())["annotations"]
    for a in anns:
        for s in a["segments_info"]:
            s["score"] = 0.9
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"annotations": anns}))
    out = tmp_path / "r.json"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["evaluate", "--dataset", "cityscapes", "--gt-json", str(gt), "--pred-json", str(pred),
                   "--pred-folder", str(root / "gtFine" / "cityscapes_panoptic_val_trainId"), "--instance",
                   "--miou", "--cityscapes-gt", str(root / "gtFine" / "val"), "--no-progress",
                   "--output", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["backend"] == "hotcoco" and r["panoptic"]["All"]["pq"] == 1.0 and r["panoptic"]["All"]["n"] == 7
    assert r["cityscapes"]["instance"]["ap"] == 1.0 and r["cityscapes"]["semantic"]["miou"] == 1.0
