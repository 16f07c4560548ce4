"""Visualisation: colours from the catalog, overlay geometry, grid layout, demo stage 1."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.visualize import colorize_panoptic, draw_overlay, save_grid

META = get_dataset_meta("coco")
PAN = np.zeros((40, 60), np.int64)
PAN[:, :30] = 10  # sky-other-merged (stuff, id 187)
PAN[10:30, 35:55] = 20  # person
PAN[12:20, 5:15] = 21  # person
SEGS = [{"id": 10, "category_id": 187}, {"id": 20, "category_id": 1, "isthing": 1},
        {"id": 21, "category_id": 1, "isthing": 1}]


def test_colorize_uses_category_colours_and_jitters_things():
    out = colorize_panoptic(PAN, SEGS, META.categories)
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    sky = next(c for c in META.categories if c["id"] == 187)["color"]
    assert tuple(out[0, 0]) == tuple(sky)
    assert tuple(out[0, 59]) == (0, 0, 0)  # void
    a, b = tuple(out[15, 40]), tuple(out[15, 8])
    assert a != b  # two person instances, two colours
    person = np.array(META.categories[0]["color"])
    assert np.abs(np.array(a) - person).max() <= 60 and np.abs(np.array(b) - person).max() <= 60
    assert np.array_equal(colorize_panoptic(PAN, SEGS, META), out)  # a DatasetMeta works too


def test_overlay_blends_outlines_and_labels():
    img = np.full((40, 60, 3), 200, np.uint8)
    plain = np.asarray(draw_overlay(img, PAN, SEGS, META, alpha=0.5, outlines=False, labels=False))
    colours = colorize_panoptic(PAN, SEGS, META)
    np.testing.assert_allclose(plain[2, 2], (200 + colours[2, 2].astype(float)) / 2, atol=1)
    assert tuple(plain[0, 59]) == (200, 200, 200)  # void untouched
    outlined = np.asarray(draw_overlay(img, PAN, SEGS, META, outlines=True, labels=False))
    assert tuple(outlined[10, 40]) == (255, 255, 255) and tuple(outlined[20, 45]) != (255, 255, 255)
    labelled = np.asarray(draw_overlay(img, PAN, SEGS, META, outlines=False, labels=True))
    assert (labelled != plain).any()  # text boxes were drawn
    with pytest.raises(ValueError, match="sizes differ"):
        draw_overlay(img[:10], PAN, SEGS, META)


def test_save_grid(tmp_path):
    ims = [np.full((10, 20, 3), k * 40, np.uint8) for k in range(5)]
    path = save_grid(ims, tmp_path / "g.png", columns=2)
    g = np.asarray(Image.open(path))
    assert g.shape == (3 * 10 + 4 * 4, 2 * 20 + 3 * 4, 3)
    assert tuple(g[4 + 14 + 5, 4 + 24 + 5]) == (120, 120, 120)  # row 1, column 1 = image 3


def test_demo_stage1_writes_data_and_overview(tmp_path, capsys):
    from kmax_deeplab.cli import main
    assert main(["demo", "--quick", "--output", str(tmp_path), "--num-train", "4", "--num-val", "2",
                 "--seed", "1"]) == 0
    assert (tmp_path / "data" / "train" / "panoptic.json").is_file()
    assert len(list((tmp_path / "data" / "val" / "images").glob("*.jpg"))) == 2
    with Image.open(tmp_path / "overview.png") as im:
        assert im.width > im.height > 0
    assert str(tmp_path / "overview.png") in capsys.readouterr().out
