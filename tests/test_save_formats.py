"""``kmax predict --save-format coco|cityscapes|npz``: the files of a hand-built prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab.engine.writers import PredictionWriter, rgb_to_id

CATS = [{"id": 24, "name": "person", "isthing": 1, "color": [220, 20, 60]},
        {"id": 7, "name": "road", "isthing": 0, "color": [128, 64, 128]}]


def prediction():
    pan = np.zeros((4, 6), np.int32)
    pan[:, :2] = 1   # person, 8 px
    pan[:, 3:] = 2   # road, 12 px; column 2 void
    info = [{"id": 1, "category_id": 24, "isthing": True, "score": 0.9, "area": 8},
            {"id": 2, "category_id": 7, "isthing": False, "score": 0.8, "area": 12}]
    return {"panoptic": pan, "segments_info": info}


def write(tmp_path, fmt):
    writer = PredictionWriter(tmp_path, CATS, overlay=False, save_format=fmt)
    writer.add("frankfurt_000000_000294_leftImg8bit.png", np.zeros((4, 6, 3), np.uint8), prediction())
    return json.loads(writer.finish().read_text())


def test_coco_and_cityscapes_files(tmp_path):
    data = write(tmp_path, "cityscapes")
    stem = "frankfurt_000000_000294_leftImg8bit"
    assert data["annotations"][0]["file_name"] == f"{stem}.png"
    np.testing.assert_array_equal(rgb_to_id(np.asarray(Image.open(tmp_path / f"{stem}.png"))),
                                  prediction()["panoptic"])
    labels = np.asarray(Image.open(tmp_path / f"{stem}_labelIds.png"))
    assert (labels[:, :2] == 24).all() and (labels[:, 2] == 0).all() and (labels[:, 3:] == 7).all()
    lines = (tmp_path / f"{stem}_pred.txt").read_text().splitlines()
    assert lines == [f"{stem}_instances/{stem}_000.png 24 0.900000"]  # things only
    mask = np.asarray(Image.open(tmp_path / lines[0].split()[0]))
    np.testing.assert_array_equal(mask > 0, prediction()["panoptic"] == 1)


def test_npz_file(tmp_path):
    data = write(tmp_path, "npz")
    stem = "frankfurt_000000_000294_leftImg8bit"
    assert data["annotations"][0]["file_name"] == f"{stem}.npz"
    assert not (tmp_path / f"{stem}.png").exists()
    z = np.load(tmp_path / f"{stem}.npz")
    np.testing.assert_array_equal(z["panoptic"], prediction()["panoptic"])
    assert z["ids"].tolist() == [1, 2] and z["category_ids"].tolist() == [24, 7]
    assert z["isthing"].tolist() == [True, False] and z["areas"].tolist() == [8, 12]
    np.testing.assert_allclose(z["scores"], [0.9, 0.8])
    with pytest.raises(ValueError, match="save-format"):
        PredictionWriter(tmp_path, CATS, save_format="tiff")


@pytest.mark.slow
def test_predict_cli_save_format_and_rate(tmp_path, capsys):
    from pathlib import Path

    import kmax_deeplab
    from kmax_deeplab import cli

    photos = sorted((Path(kmax_deeplab.__file__).parent / "assets" / "coco_sample").glob("*.jpg"))
    out = tmp_path / "preds"
    assert cli.main(["predict", *map(str, photos), "-o", str(out), "--config", "synthetic/kmax_tiny",
                     "--opts", "model.image_size=[65,65]", "--save-format", "npz",
                     "--no-overlay"]) == 0
    err = capsys.readouterr().err
    assert "images/s" in err
    data = json.loads((out / "predictions.json").read_text())
    assert [a["file_name"] for a in data["annotations"]] == [p.stem + ".npz" for p in photos]
    for p, img in zip(photos, data["images"]):
        z = np.load(out / f"{p.stem}.npz")
        assert z["panoptic"].shape == (img["height"], img["width"])
