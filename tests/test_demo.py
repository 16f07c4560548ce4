"""``kmax demo --quick`` end to end: every stage runs and writes readable outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab.cli import main



def _rgb_to_id(path):
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


@pytest.mark.slow
def test_kmax_demo_quick_end_to_end(tmp_path, capsys):
    assert main(["demo", "--quick", "--no-progress", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # the PQ table of the synthetic validation split is printed
    assert "All" in out and "Things" in out and "Stuff" in out and "PQ" in out
    assert "NOT a COCO model" in out
    assert (tmp_path / "overview.png").is_file()
    # training artefacts and the exported native weights
    train = tmp_path / "train"
    assert (train / "last_checkpoint").read_text().strip() == "model_0000002.pt"
    assert (train / "model_final" / "model.safetensors").is_file()
    assert (train / "metrics.jsonl").read_text().strip()
    # validation predictions: COCO-panoptic JSON whose PNG ids match segments_info
    pred = json.loads((tmp_path / "val_predictions" / "predictions.json").read_text())
    assert len(pred["annotations"]) == 2
    for ann in pred["annotations"]:
        ids = _rgb_to_id(tmp_path / "val_predictions" / ann["file_name"])
        assert ids.shape == (128, 128)
        assert set(np.unique(ids)) - {0} == {s["id"] for s in ann["segments_info"]}
    assert (tmp_path / "val_overlays.png").is_file()
    # the bundled COCO photos went through the same path, at their original size
    coco = tmp_path / "coco_sample_predictions"
    sizes = {p.name: _rgb_to_id(p).shape for p in coco.glob("*.png")}
    assert sizes == {"000000142238.png": (427, 640), "000000439180.png": (360, 640)}
    assert len(list(coco.glob("*_overlay.jpg"))) == 2


def test_demo_rejects_bad_counts(capsys):
    assert main(["demo", "--quick", "--iters", "0"]) == 2
    assert "iters" in capsys.readouterr().err


def test_coco_sample_photos_ship_with_their_licence():
    from kmax_deeplab.engine.demo import coco_sample_images

    files = coco_sample_images()
    assert [f.name for f in files] == ["000000142238.jpg", "000000439180.jpg"]
    licence = (files[0].parent / "LICENSE.md").read_text()
    assert "CC BY-NC 2.0" in licence and "CC BY-NC-SA 2.0" in licence
