"""Test-time resize as each reference defines it (issue 9 item 4): the fed image size per preset.

Oracle: the sizes below were computed by the references' own code, run outside the repository
(``/work/refs/standalone/geometry_oracle.py`` on the project machine):

* bytedance: detectron2's ``ResizeShortestEdge.get_output_shape`` (the function's source at
  detectron2 v0.6, identical at HEAD 02b5c4e), called with each bytedance config's
  ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` (``configs/coco|ade20k/.../kmax_r50.yaml``:
  1281/1281; ``configs/cityscapes/.../kmax_r50.yaml``: 1025/2049) and, for the 641 canvas, 641/641.
* deeplab2 (commit 64bc1c1, TensorFlow 2.21): ``preprocess_utils.resize_to_range_helper`` with
  int32 tensor shapes, as its eval pipeline calls it, with ``min_resize_value``/``max_resize_value``
  of each config's ``eval_dataset_options`` (COCO ``kmax_meta_r50_os32``: 1281/1281; ADE20K
  ``kmax_meta_r50_os32``: 641/641, ``_res1281``: 1281/1281; Cityscapes: 0/0) after
  ``input_preprocessing._update_max_resize_value(..., is_inference=True)`` (0 -> the crop size).

Besides these 4 images the rules were checked against the same reference functions on grids of
sizes (383,724 bytedance cases over 50..2100 px at 1281/1281, 1025/2049 and 641/641; 18,786
deeplab2 cases over 100..1400 px at 641 and at the Cityscapes crop): no difference.
"""

from __future__ import annotations

import numpy as np
import pytest

from kmax_deeplab.config import get_preset
from kmax_deeplab.engine.predictor import preprocess
from kmax_deeplab.geometry import FixedCanvas, fit_size, inference_size
from kmax_deeplab.modeling.kmax.family import input_geometry

IMAGES = [(480, 640), (427, 640), (500, 1000), (1024, 2048)]

# (reference, dataset, canvas) -> fed size of each image in IMAGES, from the reference code.
ORACLE = {
    ("bytedance", "coco", (1281, 1281)): [(961, 1281), (855, 1281), (641, 1281), (641, 1281)],
    ("bytedance", "ade20k", (1281, 1281)): [(961, 1281), (855, 1281), (641, 1281), (641, 1281)],
    ("bytedance", "coco", (641, 641)): [(481, 641), (428, 641), (321, 641), (321, 641)],
    ("bytedance", "cityscapes", (1025, 2049)): [(1025, 1367), (1025, 1536), (1025, 2049), (1025, 2049)],
    ("deeplab2", "coco", (1281, 1281)): [(960, 1281), (854, 1281), (640, 1281), (640, 1281)],
    ("deeplab2", "coco", (641, 641)): [(481, 641), (428, 641), (320, 641), (320, 641)],
    ("deeplab2", "ade20k", (641, 641)): [(481, 641), (428, 641), (320, 641), (320, 641)],
    ("deeplab2", "ade20k", (1281, 1281)): [(960, 1281), (854, 1281), (640, 1281), (640, 1281)],
    ("deeplab2", "cityscapes", (1025, 2049)): [(480, 640), (427, 640), (500, 1000), (1024, 2048)],
}

# preset -> the (reference, dataset, canvas) whose rule it follows (bytedance presets).
PRESETS = {
    "coco/kmax_r50": ("bytedance", "coco", (1281, 1281)),
    "coco/kmax_convnext_tiny": ("bytedance", "coco", (1281, 1281)),
    "cityscapes/kmax_r50": ("bytedance", "cityscapes", (1025, 2049)),
    "ade20k/kmax_r50_1281": ("bytedance", "ade20k", (1281, 1281)),
}


@pytest.mark.parametrize("key", list(ORACLE), ids=lambda k: f"{k[0]}-{k[1]}-{k[2][0]}x{k[2][1]}")
def test_fed_size_equals_the_reference(key):
    rule, dataset, canvas = key
    got = [inference_size(h, w, canvas, rule=rule, dataset=dataset) for h, w in IMAGES]
    assert got == ORACLE[key]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_feed_what_their_reference_feeds(preset):
    cfg = get_preset(preset)
    geometry = input_geometry(cfg)
    assert geometry.canvas == PRESETS[preset][2]
    assert [geometry.test_size(h, w) for h, w in IMAGES] == ORACLE[PRESETS[preset]]


@pytest.mark.parametrize("dataset,canvas", [("coco", (1281, 1281)), ("coco", (641, 641)),
                                            ("ade20k", (641, 641)), ("cityscapes", (1025, 2049))])
def test_model_reference_selects_the_rule(dataset, canvas):
    cfg = get_preset("cityscapes/kmax_r50" if dataset == "cityscapes" else "coco/kmax_r50")
    cfg.model.image_size = canvas
    cfg.data.dataset = dataset
    cfg.model.reference = "deeplab2"
    assert [input_geometry(cfg).test_size(h, w) for h, w in IMAGES] == ORACLE[("deeplab2", dataset, canvas)]
    cfg.data.test_resize = "bytedance"  # an explicit rule wins over the reference's
    expected = ORACLE.get(("bytedance", dataset, canvas))
    if expected:
        assert [input_geometry(cfg).test_size(h, w) for h, w in IMAGES] == expected


def test_issue_examples_and_the_old_heuristic():
    # The issue's cases: a 480x640 photo at 641 is fed as 481x641 by both references (the old
    # "within one pixel" rule kept 480x640); 500x1000 at 641: 321 rows (bytedance, half up), not
    # 320 (round half to even); Cityscapes 1024x2048 is resized to 1025x2049 by bytedance.
    assert inference_size(480, 640, (641, 641), rule="bytedance") == (481, 641)
    assert fit_size(480, 640, (641, 641)) == (480, 640)
    assert inference_size(500, 1000, (641, 641), rule="bytedance") == (321, 641)
    assert fit_size(500, 1000, (641, 641)) == (320, 641)
    assert inference_size(1024, 2048, (1025, 2049), rule="bytedance", dataset="cityscapes") == (1025, 2049)


def test_explicit_limits_and_canvas_overflow():
    # test_min_size / test_max_size override the reference's values.
    assert inference_size(480, 640, (1281, 1281), rule="bytedance", min_size=641, max_size=641) == (481, 641)
    assert inference_size(480, 640, (1281, 1281), rule="deeplab2", min_size=0, max_size=0) == (480, 640)
    # A portrait image on the Cityscapes canvas: bytedance's rule gives 2049 rows (its own code would
    # then fail), so the image is fitted with the rule's rounding; deeplab2's rule fits by itself.
    h, w = inference_size(2048, 1024, (1025, 2049), rule="bytedance", dataset="cityscapes")
    assert (h, w) == (1025, 513)
    assert inference_size(2048, 1024, (1025, 2049), rule="deeplab2", dataset="cityscapes") == (1025, 512)
    with pytest.raises(ValueError, match="data.test_resize"):
        inference_size(10, 10, (65, 65), rule="tf")
    cfg = get_preset("coco/kmax_r50")
    cfg.data.test_resize = "detectron"
    with pytest.raises(ValueError, match="data.test_resize"):
        input_geometry(cfg)


def test_preprocess_feeds_the_rule_size():
    img = np.zeros((480, 640, 3), np.uint8)
    batch, valid = FixedCanvas((641, 641)).preprocess([img])
    assert valid == [(481, 641)] and tuple(batch.shape) == (1, 3, 641, 641)
    assert float(batch[0, :, 481:].min()) == 127.5 and float(batch[0, :, :481].max()) == 0.0
    assert preprocess([img], (641, 641))[1] == [(481, 641)]


def test_evaluation_transform_uses_the_same_rule():
    # The validation/evaluation dataset resizes like the predictor (cfg.data.test_resize).
    cfg = get_preset("coco/kmax_r50")
    cfg.model.image_size = cfg.data.crop_size = (641, 641)
    ids = np.ones((480, 640), np.int64)
    rec = {"image": np.zeros((480, 640, 3), np.uint8), "panoptic": ids,
           "segments": [{"id": 1, "category_id": 1, "train_id": 0, "iscrowd": 0}]}
    out = input_geometry(cfg).transforms(cfg.data, is_train=False)(rec)
    assert out["valid_size"] == (481, 641) and out["panoptic"].shape == (641, 641)
    cfg.model.reference = "deeplab2"
    assert input_geometry(cfg).transforms(cfg.data, is_train=False)(rec)["valid_size"] == (481, 641)
    rec500 = dict(rec, image=np.zeros((500, 1000, 3), np.uint8), panoptic=np.ones((500, 1000), np.int64))
    assert input_geometry(cfg).transforms(cfg.data, is_train=False)(rec500)["valid_size"] == (320, 641)
