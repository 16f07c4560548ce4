"""COCO-panoptic dataset: real samples, round trip, malformed inputs, image modes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset, PanopticDataError, encode_panoptic
from kmax_deeplab.data.image_io import id_to_rgb, load_rgb_image, rgb_to_id


def coco_dataset(root: Path, **kw) -> COCOPanopticDataset:
    sd = root / "sample_data"
    return COCOPanopticDataset(sd / "input_images", sd / "panoptic_examples.json", sd / "panoptic_examples",
                               get_dataset_meta("coco"), **kw)


def cityscapes_dataset(root: Path) -> COCOPanopticDataset:
    return COCOPanopticDataset(root / "leftImg8bit", root / "gtFine" / "cityscapes_panoptic_dummy_trainId.json",
                               root / "gtFine" / "cityscapes_panoptic_dummy_trainId", get_dataset_meta("cityscapes"))


def check_sample_contract(s, num_classes):
    m, h, w = s["masks"].shape
    assert s["image"].shape == (3, h, w) and str(s["image"].dtype) == "torch.float32"
    assert s["labels"].shape == (m,) and s["is_crowd"].shape == (m,) and s["segment_ids"].shape == (m,)
    assert s["void"].shape == (h, w) and s["semantic"].shape == (h, w)
    assert int(s["masks"].sum(0).max()) <= 1  # non-overlapping
    # void == not covered by a non-crowd mask; semantic is C exactly there.
    covered = s["masks"][~s["is_crowd"]].any(0)
    assert bool((s["void"] == ~covered).all())
    assert bool(((s["semantic"] == num_classes) == s["void"]).all())
    for k in range(m):
        if not s["is_crowd"][k]:
            assert bool((s["semantic"][s["masks"][k]] == s["labels"][k]).all())


def test_reads_coco_sample_and_round_trips(coco_sample):
    ds = coco_dataset(coco_sample)
    meta = ds.meta
    j = json.loads((coco_sample / "sample_data" / "panoptic_examples.json").read_text())
    assert len(ds) == 2
    n_crowd = 0
    for i, ann in enumerate(j["annotations"]):
        s = ds[i]
        check_sample_contract(s, meta.num_classes)
        img = next(im for im in j["images"] if im["id"] == ann["image_id"])
        assert (s["height"], s["width"]) == (img["height"], img["width"]) == tuple(s["image"].shape[1:])
        rgb, info = encode_panoptic(s["masks"], s["labels"], s["is_crowd"], meta, s["segment_ids"])
        original = np.asarray(Image.open(coco_sample / "sample_data" / "panoptic_examples" / ann["file_name"]))
        assert np.array_equal(rgb, original)
        want = {x["id"]: (x["category_id"], x["iscrowd"], x["area"], x["bbox"]) for x in ann["segments_info"]}
        got = {x["id"]: (x["category_id"], x["iscrowd"], x["area"], x["bbox"]) for x in info}
        assert got == want
        n_crowd += int(s["is_crowd"].sum())
    assert n_crowd == 3  # SOURCES.md: 3 crowd segments in the two images


def test_reads_cityscapes_format_sample(cityscapes_sample):
    ds = cityscapes_dataset(cityscapes_sample)
    meta = ds.meta
    assert ds.category_id_is_train_id
    s = ds[0]
    check_sample_contract(s, meta.num_classes)
    assert s["image"].shape == (3, 800, 800)
    j = json.loads((cityscapes_sample / "gtFine" / "cityscapes_panoptic_dummy_trainId.json").read_text())
    segs = j["annotations"][0]["segments_info"]
    rgb, info = encode_panoptic(s["masks"], s["labels"], s["is_crowd"], meta, s["segment_ids"])
    png = cityscapes_sample / "gtFine" / "cityscapes_panoptic_dummy_trainId" / j["annotations"][0]["file_name"]
    assert np.array_equal(rgb_to_id(rgb), rgb_to_id(np.asarray(Image.open(png))))
    # category_id in the file is the train id; encode_panoptic writes label ids.
    want = {x["id"]: (meta.train_id_to_category_id[x["category_id"]], x["iscrowd"], x["area"]) for x in segs}
    assert {x["id"]: (x["category_id"], x["iscrowd"], x["area"]) for x in info} == want
    assert int(s["void"].sum()) == 571 + 6178  # unlabelled + the crowd car region


# ---------------------------------------------------------------- malformed inputs

def make_tiny_dataset(tmp: Path, ids: np.ndarray, segments: list, image_size=None, categories=None) -> Path:
    (tmp / "img").mkdir(parents=True, exist_ok=True)
    (tmp / "pan").mkdir(exist_ok=True)
    h, w = ids.shape if image_size is None else image_size
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(tmp / "img" / "a.jpg")
    Image.fromarray(id_to_rgb(ids)).save(tmp / "pan" / "a.png")
    cats = categories or [{"id": 1, "name": "thing", "isthing": 1, "color": [1, 2, 3]},
                          {"id": 2, "name": "stuff", "isthing": 0, "color": [4, 5, 6]}]
    j = {"images": [{"id": 7, "file_name": "a.jpg", "height": h, "width": w}],
         "annotations": [{"image_id": 7, "file_name": "a.png", "segments_info": segments}], "categories": cats}
    (tmp / "pan.json").write_text(json.dumps(j))
    return tmp


def tiny_ds(tmp: Path, **kw) -> COCOPanopticDataset:
    from kmax_deeplab.data.catalog import meta_from_categories
    meta = meta_from_categories("tiny", [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}])
    return COCOPanopticDataset(tmp / "img", tmp / "pan.json", tmp / "pan", meta, **kw)


IDS = np.array([[0, 5, 5, 9], [5, 5, 9, 9], [9, 9, 9, 9]], dtype=np.int64)
SEGS = [{"id": 5, "category_id": 1, "iscrowd": 0}, {"id": 9, "category_id": 2, "iscrowd": 0}]


def test_tiny_dataset_is_valid(tmp_path):
    s = tiny_ds(make_tiny_dataset(tmp_path, IDS, SEGS))[0]
    assert s["labels"].tolist() == [0, 1] and s["void"].sum() == 1


def test_missing_image_file(tmp_path):
    make_tiny_dataset(tmp_path, IDS, SEGS)
    (tmp_path / "img" / "a.jpg").unlink()
    with pytest.raises(PanopticDataError, match=r"a\.jpg: image file not found"):
        tiny_ds(tmp_path)[0]


def test_missing_png_file(tmp_path):
    make_tiny_dataset(tmp_path, IDS, SEGS)
    (tmp_path / "pan" / "a.png").unlink()
    with pytest.raises(PanopticDataError, match=r"a\.png: panoptic PNG not found"):
        tiny_ds(tmp_path)[0]


def test_missing_json(tmp_path):
    with pytest.raises(PanopticDataError, match=r"pan\.json: panoptic JSON not found"):
        tiny_ds(tmp_path)


def test_truncated_image(tmp_path):
    make_tiny_dataset(tmp_path, IDS, SEGS)
    big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "img" / "a.jpg", quality=95)
    data = (tmp_path / "img" / "a.jpg").read_bytes()
    (tmp_path / "img" / "a.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(PanopticDataError, match=r"a\.jpg: unreadable or truncated image"):
        tiny_ds(tmp_path)[0]


def test_unreadable_image(tmp_path):
    make_tiny_dataset(tmp_path, IDS, SEGS)
    (tmp_path / "img" / "a.jpg").write_bytes(b"not an image at all")
    with pytest.raises(PanopticDataError, match=r"a\.jpg: unreadable or truncated image"):
        tiny_ds(tmp_path)[0]


def test_png_id_not_in_segments_info(tmp_path):
    make_tiny_dataset(tmp_path, IDS, SEGS[:1])
    with pytest.raises(PanopticDataError, match=r"a\.png: PNG id\(s\) \[9\] not in segments_info"):
        tiny_ds(tmp_path)[0]


def test_segments_info_id_not_in_png(tmp_path):
    make_tiny_dataset(tmp_path, IDS, SEGS + [{"id": 77, "category_id": 1, "iscrowd": 0}])
    with pytest.raises(PanopticDataError, match=r"a\.png: segments_info id\(s\) \[77\] missing from the PNG"):
        tiny_ds(tmp_path)[0]


def test_unknown_category(tmp_path):
    make_tiny_dataset(tmp_path, IDS, [SEGS[0], {"id": 9, "category_id": 42, "iscrowd": 0}])
    with pytest.raises(PanopticDataError, match=r"a\.png: segment 9 has unknown category id 42"):
        tiny_ds(tmp_path)[0]


def test_size_mismatch(tmp_path):
    make_tiny_dataset(tmp_path, IDS, SEGS, image_size=(3, 5))
    with pytest.raises(PanopticDataError, match=r"a\.png: size mismatch, panoptic PNG is 4x3 \(WxH\) but image .*a\.jpg is 5x3"):
        tiny_ds(tmp_path)[0]


def test_skip_warns_and_returns_next_valid(tmp_path, coco_sample):
    # Two images; the first one's PNG is missing.
    sd = coco_sample / "sample_data"
    shutil.copytree(sd / "input_images", tmp_path / "img")
    shutil.copytree(sd / "panoptic_examples", tmp_path / "pan")
    shutil.copy(sd / "panoptic_examples.json", tmp_path / "pan.json")
    (tmp_path / "pan" / "000000142238.png").unlink()
    ds = COCOPanopticDataset(tmp_path / "img", tmp_path / "pan.json", tmp_path / "pan", get_dataset_meta("coco"),
                             on_bad_sample="skip")
    with pytest.warns(RuntimeWarning, match=r"000000142238\.png: panoptic PNG not found"):
        s = ds[0]
    assert s["image_id"] == 439180
    with pytest.raises(PanopticDataError):
        COCOPanopticDataset(tmp_path / "img", tmp_path / "pan.json", tmp_path / "pan",
                            get_dataset_meta("coco"))[0]


# ---------------------------------------------------------------- image modes

@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_image_modes_give_rgb_float(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    if mode == "I;16":
        im = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
        assert im.mode == "I;16"
        want = rgb[..., 0].astype(np.float32)[..., None].repeat(3, 2)
    else:
        im = Image.fromarray(rgb).convert(mode)
        want = np.asarray(im.convert("RGB"), dtype=np.float32)
    im.save(tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.tiff")
    out = load_rgb_image(tmp_path / ("x.png" if mode != "CMYK" else "x.tiff"))
    assert out.shape == (5, 7, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=0.01)


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = 255  # marker at top-left of the stored pixels
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = load_rgb_image(tmp_path / "r.jpg")
    assert out.shape == (6, 4, 3)
    assert out[0, -1].mean() > 200  # the top-left marker is now top-right
    assert load_rgb_image(tmp_path / "r.jpg", exif_transpose=False).shape == (4, 6, 3)
