"""One image reader (issue 14, item 3): the same odd files give the same array in prediction
(``Predictor`` / ``kmax predict``: ``engine.predictor.load_image``) and in training
(``COCOPanopticDataset.load_record``), with hand-computed expected values: 16-bit scaled by
255/65535 (not clipped to white), EXIF orientation applied, float 0..1 scaled, palette, CMYK,
LA and 1-bit converted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
from kmax_deeplab.data.image_io import image_to_rgb
from kmax_deeplab.engine.predictor import load_image
from kmax_deeplab.panoptic_ids import id_to_rgb


def _odd_files(folder):
    """{file name: expected [H, W, 3] uint8 array or a check function}."""
    folder.mkdir()
    out = {}
    # 16-bit grey, uniform 30000: 30000 * 255 / 65535 = 116.7 -> 117 (convert("RGB") gave 255).
    Image.fromarray(np.full((6, 7), 30000, np.uint16)).save(folder / "grey16.png")
    out["grey16.png"] = np.full((6, 7, 3), 117, np.uint8)
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): stored 16x8, left half red.
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:, :8] = (255, 0, 0)
    stored[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)

    def rotated(a):
        assert a.shape == (16, 8, 3)  # displayed upright: 8 wide, 16 high
        assert a[3, 4, 0] > 200 and a[3, 4, 2] < 60  # the stored left (red) half is on top
        assert a[12, 4, 2] > 200 and a[12, 4, 0] < 60

    out["rotated.jpg"] = rotated
    # float TIFF in 0..1: 0.5 -> 127.5 -> 128 (convert("RGB") made it black).
    Image.fromarray(np.full((5, 4), 0.5, np.float32), mode="F").save(folder / "float.tif")
    out["float.tif"] = np.full((5, 4, 3), 128, np.uint8)
    # palette with transparency
    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png", transparency=0)
    out["palette.png"] = np.tile(np.array([10, 200, 30], np.uint8), (3, 4, 1))
    # CMYK all zero = white
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(folder / "cmyk.jpg", quality=100)
    out["cmyk.jpg"] = lambda a: (a.shape == (4, 4, 3)) and np.testing.assert_allclose(a, 255, atol=2)
    # grey + alpha: alpha is dropped
    Image.new("LA", (3, 2), (200, 50)).save(folder / "la.png")
    out["la.png"] = np.full((2, 3, 3), 200, np.uint8)
    # 1-bit
    Image.new("1", (5, 2), 1).save(folder / "bits.png")
    out["bits.png"] = np.full((2, 5, 3), 255, np.uint8)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    expected = _odd_files(root / "images")
    (root / "panoptic").mkdir()
    images, annotations = [], []
    for i, name in enumerate(sorted(expected), start=1):
        arr = load_image(root / "images" / name)  # only for the size of the void panoptic PNG
        Image.fromarray(id_to_rgb(np.zeros(arr.shape[:2], np.int64))).save(root / "panoptic" / f"{i}.png")
        images.append({"id": i, "file_name": name, "height": arr.shape[0], "width": arr.shape[1]})
        annotations.append({"image_id": i, "file_name": f"{i}.png", "segments_info": []})
    meta = get_dataset_meta("synthetic")
    (root / "pan.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                               "categories": list(meta.categories)}))
    ds = COCOPanopticDataset(root / "images", root / "pan.json", root / "panoptic", meta)
    return ds, root / "images", expected


def test_training_and_prediction_read_the_same_array(dataset):
    ds, folder, expected = dataset
    assert len(ds) == len(expected)
    for i in range(len(ds)):
        rec = ds.load_record(i)
        name = rec["file_name"].split("/")[-1]
        train = rec["image"]
        predict = load_image(folder / name)
        assert train.dtype == predict.dtype == np.uint8
        np.testing.assert_array_equal(train, predict, err_msg=name)
        want = expected[name]
        if callable(want):
            want(predict)
        else:
            np.testing.assert_array_equal(predict, want, err_msg=name)
        # a PIL image of the same file (as the app passes) gives the same array too
        with Image.open(folder / name) as im:
            np.testing.assert_array_equal(load_image(im), predict, err_msg=name)


def test_arrays_of_other_dtypes_are_scaled_not_clipped():
    np.testing.assert_array_equal(image_to_rgb(np.full((2, 2), 30000, np.uint16)), 117)
    np.testing.assert_array_equal(image_to_rgb(np.full((2, 2, 3), 0.5, np.float32)), 128)
    np.testing.assert_array_equal(image_to_rgb(np.full((2, 2, 3), 200.0)), 200)
    np.testing.assert_array_equal(image_to_rgb(np.ones((2, 2), bool)), 255)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 1] = 9
    assert image_to_rgb(rgba).shape == (2, 2, 3) and (image_to_rgb(rgba)[..., 1] == 9).all()
