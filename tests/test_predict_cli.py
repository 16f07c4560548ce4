"""``kmax predict`` on the real COCO sample photos: the output is a valid panopticapi
prediction set (checked by the official ``pq_compute``), overlays are JPEGs of the image
size, and a corrupt file is reported and skipped."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab import cli
from kmax_deeplab.engine.writers import id_to_rgb, rgb_to_id

from panopticapi.evaluation import pq_compute

OPTS = ["model.num_classes=133", "data.dataset=coco", "model.image_size=[129,129]",
        # Random weights: class probabilities are ~1/134 and mask probabilities ~1/N, so let
        # every query through; the first-ranked query then takes every pixel.
        "postprocess.thing_threshold=0.0", "postprocess.stuff_threshold=0.0",
        "postprocess.overlap_threshold=0.0", "postprocess.pixel_confidence_threshold=0.0"]


def test_id_png_encoding_roundtrips():
    ids = np.array([[0, 1, 255], [256, 65_536 + 3, 256 ** 3 - 1]])
    assert id_to_rgb(ids)[1, 1].tolist() == [3, 0, 1]
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)
    with pytest.raises(ValueError):
        id_to_rgb(np.array([[256 ** 3]]))


@pytest.mark.slow
def test_predict_writes_a_valid_panopticapi_prediction_set(tmp_path, coco_sample,
                                                           capsys):
    sample = coco_sample / "sample_data"
    inputs = tmp_path / "in"
    shutil.copytree(sample / "input_images", inputs)
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    out = tmp_path / "out"
    code = cli.main(["predict", str(inputs), "--output", str(out), "--config",
                     "synthetic/kmax_tiny", "--quiet", "--opts", *OPTS])
    err = capsys.readouterr().err
    assert code == 0
    assert "corrupt.jpg" in err and "RANDOM" in err

    pred = json.loads((out / "predictions.json").read_text())
    assert len(pred["categories"]) == 133
    assert sorted(a["image_id"] for a in pred["annotations"]) == [142238, 439180]
    assert all(a["segments_info"] for a in pred["annotations"])
    gt_images = {im["id"]: im for im in json.loads((sample / "panoptic_examples.json").read_text())["images"]}
    for ann in pred["annotations"]:
        ids = rgb_to_id(np.asarray(Image.open(out / ann["file_name"])))
        gt = gt_images[ann["image_id"]]
        assert ids.shape == (gt["height"], gt["width"])
        uniq, counts = np.unique(ids, return_counts=True)
        assert {int(i): int(c) for i, c in zip(uniq, counts) if i} == {
            s["id"]: s["area"] for s in ann["segments_info"]}
        with Image.open(out / f"{ann['file_name'][:-4]}_overlay.jpg") as overlay:
            assert overlay.format == "JPEG" and overlay.size == (gt["width"], gt["height"])

    # The official evaluator accepts the set (it raises on any id/JSON/category mismatch).
    result = pq_compute(str(sample / "panoptic_examples.json"), str(out / "predictions.json"),
                        gt_folder=str(sample / "panoptic_examples"), pred_folder=str(out))
    assert 0.0 <= result["All"]["pq"] <= 1.0 and result["All"]["n"] > 0


def test_nothing_readable_exits_non_zero(tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    code = cli.main(["predict", str(tmp_path / "bad.png"), "--output", str(tmp_path / "o"),
                     "--config", "synthetic/kmax_tiny", "--quiet", "--no-overlay", "--opts", *OPTS])
    assert code == 1
    assert "bad.png" in capsys.readouterr().err
    assert not (tmp_path / "o" / "predictions.json").exists()
    assert cli.main(["predict", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
