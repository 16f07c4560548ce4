"""Catalog: the shipped category tables against the official files and the spec's conventions."""

from __future__ import annotations

import json

import pytest

from kmax_deeplab.data.catalog import get_dataset_meta, meta_from_categories

KEYS = ("id", "name", "isthing", "color")


def test_coco_categories_equal_panopticapi(coco_sample):
    official = json.loads((coco_sample / "panoptic_coco_categories.json").read_text())
    meta = get_dataset_meta("coco")
    assert [{k: c[k] for k in KEYS} for c in meta.categories] == [{k: c[k] for k in KEYS} for c in official]
    assert meta.num_classes == 133 and len(meta.thing_train_ids) == 80
    assert meta.thing_train_ids == frozenset(range(80))  # things first (spec §5.2)
    assert (meta.label_divisor, meta.ignore_label) == (256, 0)
    assert meta.category_id_to_train_id[1] == 0 and meta.train_id_to_category_id[132] == 200


def test_coco_categories_match_sample_json(coco_sample):
    j = json.loads((coco_sample / "sample_data" / "panoptic_examples.json").read_text())
    meta = get_dataset_meta("coco")
    assert [{k: c[k] for k in KEYS} for c in meta.categories] == [{k: c[k] for k in KEYS} for c in j["categories"]]


def test_cityscapes_matches_deeplab2_table(cityscapes_sample):
    official = json.loads((cityscapes_sample / "panoptic_cityscapes_categories.json").read_text())
    meta = get_dataset_meta("cityscapes")
    assert [{k: c[k] for k in KEYS} for c in meta.categories] == [
        {k: (list(c[k]) if k == "color" else c[k]) for k in KEYS} for c in official]
    assert meta.thing_train_ids == frozenset(range(11, 19))
    assert (meta.num_classes, meta.label_divisor, meta.ignore_label) == (19, 1000, 255)
    assert meta.train_id_to_category_id[13] == 26  # car


def test_ade20k_table():
    meta = get_dataset_meta("ade20k")
    assert meta.num_classes == 150 and len(meta.thing_train_ids) == 100
    assert (meta.label_divisor, meta.ignore_label) == (1000, 0)
    # Spot checks against Mask2Former's ADE20K_150_CATEGORIES.
    assert meta.categories[0] == {"id": 0, "name": "wall", "isthing": 0, "color": [120, 120, 120]}
    assert meta.categories[7]["name"] == "bed" and meta.is_thing(7)
    assert meta.categories[12]["name"] == "person" and meta.is_thing(12)
    assert meta.categories[149] == {"id": 149, "name": "flag", "isthing": 1, "color": [92, 0, 255]}
    assert not meta.is_thing(2)  # sky


def test_synthetic_classes():
    meta = get_dataset_meta("synthetic")
    assert meta.class_names == ("disc", "square", "triangle", "star", "sky", "ground", "wall")
    assert meta.train_id_to_category_id == (1, 2, 3, 4, 5, 6, 7)
    assert meta.thing_train_ids == frozenset({0, 1, 2, 3}) and meta.num_classes == 7


def test_unknown_dataset_and_bad_categories():
    with pytest.raises(KeyError, match="available"):
        get_dataset_meta("nope")
    with pytest.raises(ValueError, match="duplicated"):
        meta_from_categories("x", [{"id": 1, "name": "a", "isthing": 1}, {"id": 1, "name": "b", "isthing": 0}])
