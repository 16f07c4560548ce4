"""Synthetic dataset: determinism, readback through the COCO-panoptic reader, content rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kmax_deeplab.config import get_preset
from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
from kmax_deeplab.data.synthetic import render_synthetic_sample, write_synthetic_dataset


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    write_synthetic_dataset(root, num_train=12, num_val=4, image_size=64, seed=3)
    return root


def test_deterministic_byte_identical(synthetic_root, tmp_path):
    write_synthetic_dataset(tmp_path / "b", num_train=12, num_val=4, image_size=64, seed=3)
    a, b = files(synthetic_root), files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 2 * 16 + 2
    assert a == b
    write_synthetic_dataset(tmp_path / "c", num_train=12, num_val=4, image_size=64, seed=4)
    assert files(tmp_path / "c")["train/panoptic/000000.png"] != a["train/panoptic/000000.png"]


def test_readback_with_preset_layout(synthetic_root):
    d = get_preset("synthetic/kmax_tiny").data
    meta = get_dataset_meta(d.dataset)
    for split, image_dir, js, pan, n in (("train", d.train_image_dir, d.train_json, d.train_panoptic_dir, 12),
                                         ("val", d.val_image_dir, d.val_json, d.val_panoptic_dir, 4)):
        ds = COCOPanopticDataset(synthetic_root / image_dir, synthetic_root / js, synthetic_root / pan, meta)
        assert len(ds) == n
        for i in range(n):
            s = ds[i]
            assert s["image"].shape == (3, 64, 64)
            labels = s["labels"].tolist()
            assert sum(meta.is_thing(t) for t in labels) in range(1, 6)  # 1-5 things
            assert sum(not meta.is_thing(t) for t in labels) >= 2  # >= 2 stuff regions
            assert int(s["void"].sum()) == 0  # every pixel labelled
    cats = json.loads((synthetic_root / "train" / "panoptic.json").read_text())["categories"]
    assert [(c["id"], c["name"], c["isthing"]) for c in cats] == [
        (c["id"], c["name"], c["isthing"]) for c in meta.categories]


def test_thing_colour_is_independent_of_class():
    rng = np.random.default_rng(0)
    colours = {k: [] for k in range(1, 5)}
    for _ in range(60):
        image, ids, segs = render_synthetic_sample(rng, 48)
        for s in segs:
            if s["category_id"] <= 4:
                colours[s["category_id"]].append(image[ids == s["id"]].mean(0))
    means = np.array([np.mean(colours[k], 0) for k in colours])
    # Every class spans the colour range and the class means are close to each other.
    assert all(np.ptp(np.array(colours[k]), 0).min() > 120 for k in colours)
    assert np.ptp(means, 0).max() < 60
