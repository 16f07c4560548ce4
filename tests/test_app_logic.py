"""The web demo's logic without a browser: upload checks, model choices, post-processing only
on cached outputs (oracle: the Predictor's own results)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from kmax_deeplab.app import FOLDER_CHOICE, ModelChoices, prepare_image, render, run_network
from kmax_deeplab.config import apply_overrides, get_preset
from kmax_deeplab.engine.predictor import Predictor
from kmax_deeplab.engine.writers import rgb_to_id
from kmax_test_utils import randomise_batch_norms


def test_uploads_that_are_not_images_or_are_huge(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        prepare_image(str(text))
    with pytest.raises(ValueError, match="no image"):
        prepare_image(None)
    big = np.zeros((300, 1000, 3), np.uint8)
    small, note = prepare_image(big, max_side=500)
    assert small.shape == (150, 500, 3) and "1000x300" in note and "500x150" in note
    same, note = prepare_image(big, max_side=1000)
    assert same.shape == big.shape and note == ""


def test_missing_model_messages(tmp_path):
    choices = ModelChoices(zoo=False, demo_dir=tmp_path / "absent")
    assert choices.labels() == [FOLDER_CHOICE]  # no demo model folder, no zoo
    with pytest.raises(ValueError, match="model folder .*nope not found"):
        choices.get(FOLDER_CHOICE, str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="type the path"):
        choices.get(FOLDER_CHOICE, "  ")
    with pytest.raises(ValueError, match="unknown model"):
        ModelChoices(zoo=True).get("kmax_not_a_zoo_name")


@pytest.mark.slow
def test_sliders_rerun_only_the_postprocessing(tmp_path, monkeypatch):
    cfg = apply_overrides(get_preset("synthetic/kmax_tiny"), [
        "model.image_size=[65,65]", "postprocess.thing_threshold=0.0",
        "postprocess.stuff_threshold=0.0", "postprocess.pixel_confidence_threshold=0.2",
        "postprocess.overlap_threshold=0.3"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        predictor = Predictor.from_config(cfg)
    randomise_batch_norms(predictor.model, 0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    raw = run_network(predictor, image)
    calls = []
    monkeypatch.setattr(predictor, "_forward", lambda x: calls.append(x) or 1 / 0)
    res = render(predictor, image, raw, out_dir=tmp_path / "a")
    expected = predictor.postprocess(raw, [image.shape[:2]])[0]
    np.testing.assert_array_equal(res.panoptic, expected["panoptic"])
    assert [r["id"] for r in res.segments] == [s["id"] for s in expected["segments_info"]]
    assert abs(sum(r["area_pct"] for r in res.segments)
               - 100 * (expected["panoptic"] > 0).mean()) < 0.05
    # a higher thing threshold drops thing segments, without a forward pass
    top = max(s["score"] for s in expected["segments_info"] if s["isthing"])
    strict = render(predictor, image, raw, out_dir=tmp_path / "b", thing_threshold=top)
    assert all(r["kind"] == "stuff" for r in strict.segments) and calls == []
    # downloads: the id PNG and the COCO-panoptic JSON of the shown result
    np.testing.assert_array_equal(rgb_to_id(np.asarray(Image.open(res.png_path))), res.panoptic)
    data = json.loads(res.json_path.read_text())
    assert [s["id"] for s in data["annotations"][0]["segments_info"]] == [r["id"] for r in res.segments]
    # semantic toggle and opacity change only the drawing
    sem = render(predictor, image, raw, out_dir=tmp_path / "c", semantic=True, opacity=1.0)
    np.testing.assert_array_equal(sem.panoptic, res.panoptic)
    assert not np.array_equal(sem.overlay, res.overlay)
    clear = render(predictor, image, raw, out_dir=tmp_path / "d", opacity=0.0)
    changed = lambda r: (r.overlay != image).any(-1).mean()  # noqa: E731
    assert changed(clear) < 0.5 * changed(res)  # opacity 0: only outlines and labels remain
    with pytest.raises(ValueError, match="postprocess overrides"):
        render(predictor, image, raw, thing_treshold=0.5)
