"""``kmax prepare ade20k`` and ``kmax prepare coco`` on raw-format fixtures made from the
real COCO panoptic sample: outputs follow the reference rules (checked pixel by pixel
against the source annotations, and against panopticapi's own detection-format file of
the sample), resume, and read back through the dataset class."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab.cli import main
from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
from kmax_deeplab.data.prepare import PrepareError, prepare_ade20k, prepare_coco
from kmax_deeplab.data.prepare.ade20k import ADE20K_INSTANCE_TO_SEMANTIC, convert_ade20k_image
from prepare_fixtures import ADE_FOR_COCO, make_ade20k_raw, make_coco_raw


def _ids(path):
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def test_instance_mapping_is_the_catalog_things():
    meta = get_dataset_meta("ade20k")
    assert sorted(set(ADE20K_INSTANCE_TO_SEMANTIC)) == sorted(meta.thing_train_ids)
    assert len(ADE20K_INSTANCE_TO_SEMANTIC) == 100 and meta.num_classes == 150


def test_ade20k_panoptic_and_semantic(coco_sample, tmp_path):
    names = make_ade20k_raw(tmp_path, coco_sample)
    rc = main(["prepare", "ade20k", str(tmp_path), "--no-progress"])
    assert rc == 0
    base = tmp_path / "ADEChallengeData2016"
    src = json.loads((coco_sample / "sample_data" / "panoptic_examples.json").read_text())
    coco_cats = {c["id"]: c for c in src["categories"]}
    for split, d in (("val", "validation"), ("train", "training")):
        out = json.loads((base / f"ade20k_panoptic_{split}.json").read_text())
        assert [c["id"] for c in out["categories"]] == list(range(150))
        (name,) = names[d]
        (ann,) = out["annotations"]
        assert ann["image_id"] == name and out["images"][0]["file_name"] == f"{name}.jpg"
        pan = _ids(base / f"ade20k_panoptic_{split}" / ann["file_name"])
        # Independent check against the source annotation the fixture came from.
        k = 0 if split == "val" else 1
        src_ann = src["annotations"][k]
        src_ids = _ids(coco_sample / "sample_data" / "panoptic_examples" / src_ann["file_name"])
        by_id = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(pan).tolist()) - {0} == set(by_id)
        for s in src_ann["segments_info"]:
            m = src_ids == s["id"]
            ade = ADE_FOR_COCO[s["category_id"]]
            got = np.unique(pan[m]).tolist()
            if coco_cats[s["category_id"]]["isthing"] and s["iscrowd"]:
                assert got == [0]  # thing class without an instance: VOID
                continue
            assert len(got) == 1 and by_id[got[0]]["category_id"] == ade
        for sid, s in by_id.items():
            assert s["area"] == int((pan == sid).sum())
            assert get_dataset_meta("ade20k").categories[s["category_id"]]["isthing"] == (sid >= 1000)
        # reduce_zero_label: class - 1, "other" (0) -> 255
        sem = np.asarray(Image.open(base / "annotations_detectron2" / d / f"{name}.png"))
        raw = np.asarray(Image.open(base / "annotations" / d / f"{name}.png"))
        assert sem.dtype == np.uint8 and (sem == np.where(raw == 0, 255, raw.astype(int) - 1)).all()
        assert 255 in np.unique(sem)
        ds = COCOPanopticDataset(base / "images" / d, base / f"ade20k_panoptic_{split}.json",
                                 base / f"ade20k_panoptic_{split}", get_dataset_meta("ade20k"))
        sample = ds[0]
        assert sample["masks"].shape[0] == len(ann["segments_info"])
    # Resumed: nothing left to do.
    assert prepare_ade20k(tmp_path, progress=False)["val"]["converted"] == 0


def test_ade20k_things_over_stuff_and_errors():
    cats = [dict(c) for c in get_dataset_meta("ade20k").categories]
    sem = np.zeros((4, 6), np.uint8)
    sem[:, :3] = 1  # wall (stuff 0)
    sem[:, 3:] = 13  # person (thing 12) semantic class
    inst = np.zeros((4, 6, 3), np.uint8)
    inst[:2, 2:5, 0] = ADE20K_INSTANCE_TO_SEMANTIC.index(12) + 1
    inst[:2, 2:5, 1] = 1  # one person instance, overlapping the wall by a column
    rgb, segs = convert_ade20k_image(sem, inst, cats)
    ids = rgb[..., 0].astype(int) + 256 * rgb[..., 1].astype(int)
    assert {s["id"]: (s["category_id"], s["area"]) for s in segs} == {1: (0, 10), 13001: (12, 6)}
    assert (ids[2:, 3:] == 0).all()  # person pixels without instance: VOID
    inst[0, 0, 1] = 1  # instance 1 now spans two instance classes
    with pytest.raises(ValueError, match="instance 1"):
        convert_ade20k_image(sem, inst, cats)


def test_coco_semantic_and_instances(coco_sample, tmp_path):
    root = make_coco_raw(tmp_path / "coco", coco_sample)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["prepare", "coco", str(root), "--no-progress"]) == 0
    assert "instances derived from panoptic" in out.getvalue()
    meta = get_dataset_meta("coco")
    pan = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    for ann in pan["annotations"]:
        sem = np.asarray(Image.open(root / "panoptic_semseg_val2017" / ann["file_name"]))
        ids = _ids(root / "annotations" / "panoptic_val2017" / ann["file_name"])
        want = np.full(ids.shape, 255)
        for s in ann["segments_info"]:
            want[ids == s["id"]] = [c["id"] for c in pan["categories"]].index(s["category_id"])
        assert (sem == want).all()
        assert (sem[ids == 0] == 255).all() and set(np.unique(sem).tolist()) - {255}
    # Instances against panopticapi's own detection-format conversion of the sample.
    ref = json.loads((coco_sample / "sample_data" / "panoptic_coco_detection_format.json").read_text())
    derived = json.loads((root / "annotations" / "instances_val2017_from_panoptic.json").read_text())
    things = {c["id"] for c in meta.categories if c["isthing"]}
    want = [{k: v for k, v in a.items() if k != "id"} for a in ref["annotations"] if a["category_id"] in things]
    got = [{k: v for k, v in a.items() if k != "id"} for a in derived["annotations"]]
    key = lambda a: (a["image_id"], a["bbox"])  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key)
    assert len(got) == 43  # of the 50 segments, the thing ones (crowd included)
    assert [a["id"] for a in derived["annotations"]] == list(range(1, len(got) + 1))
    assert {c["id"] for c in derived["categories"]} == things
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        COCO(str(root / "annotations" / "instances_val2017_from_panoptic.json"))  # loads
    # A present instances_*.json is used as is; valid semantic PNGs are kept.
    (root / "annotations" / "instances_val2017.json").write_text("{}")
    s = prepare_coco(root, progress=False)["val2017"]
    assert s["converted"] == 0 and s["instances"].endswith("instances_val2017.json")
    ds = COCOPanopticDataset(root / "val2017", root / "annotations" / "panoptic_val2017.json",
                             root / "annotations" / "panoptic_val2017", meta)
    assert len(ds) == 2 and ds[1]["masks"].shape[0] == 32


def test_coco_errors(tmp_path):
    with pytest.raises(PrepareError, match="panoptic_"):
        prepare_coco(tmp_path, progress=False)
    with pytest.raises(PrepareError, match="ADEChallengeData2016"):
        prepare_ade20k(tmp_path, progress=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["prepare", "coco", str(tmp_path), "--no-progress"]) == 1
    assert err.getvalue().startswith("kmax prepare coco: error:")


def test_ade20k_equals_mask2former_golden(coco_sample, tmp_path):
    """Mask2Former's own prepare_ade20k_pan_seg.py / prepare_ade20k_sem_seg.py output on the
    same fixture (tools/record_ade20k_golden.py), up to its random segment ids."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from record_ade20k_golden import array_sha256, canonical_segments

    golden = json.loads((Path(__file__).parent / "data" / "prepare" /
                         "ade20k_mask2former_golden.json").read_text())
    make_ade20k_raw(tmp_path, coco_sample)
    prepare_ade20k(tmp_path, progress=False)
    base = tmp_path / "ADEChallengeData2016"
    seen = 0
    for split, d in (("train", "training"), ("val", "validation")):
        data = json.loads((base / f"ade20k_panoptic_{split}.json").read_text())
        assert [[c["id"], c["name"], c["isthing"]] for c in data["categories"]] == golden["categories_" + split]
        for img, ann in zip(data["images"], data["annotations"]):
            want = golden["panoptic"][ann["image_id"]]
            assert img == want["image"] and ann["file_name"] == want["file_name"]
            got = canonical_segments(base / f"ade20k_panoptic_{split}" / ann["file_name"], ann["segments_info"])
            assert got == want["segments"]
            seen += 1
        for png in (base / "annotations_detectron2" / d).glob("*.png"):
            assert array_sha256(png) == golden["semantic_sha256"][png.stem]
            seen += 1
    assert seen == 4


def test_ade20k_from_the_archives(coco_sample, tmp_path):
    import shutil
    import tarfile
    import zipfile

    make_ade20k_raw(tmp_path / "plain", coco_sample)
    prepare_ade20k(tmp_path / "plain", progress=False)
    src = tmp_path / "plain" / "ADEChallengeData2016"
    root = tmp_path / "archives"
    root.mkdir()
    with zipfile.ZipFile(root / "ADEChallengeData2016.zip", "w") as zf:
        for sub in ("images", "annotations"):
            for p in sorted((src / sub).rglob("*")):
                zf.write(p, p.relative_to(src.parent).as_posix())
    with tarfile.open(root / "annotations_instance.tar", "w") as tf:
        tf.add(src / "annotations_instance", "annotations_instance")
    prepare_ade20k(root, progress=False)
    for split in ("train", "val"):
        name = f"ade20k_panoptic_{split}.json"
        assert (root / "ADEChallengeData2016" / name).read_text() == (src / name).read_text()
    assert not list(root.glob(".*extracting"))
    shutil.rmtree(root / "ADEChallengeData2016" / "annotations_instance")
    (root / "annotations_instance.tar").write_bytes(b"not a tar")
    with pytest.raises(PrepareError, match="annotations_instance.tar"):
        prepare_ade20k(root, progress=False)
