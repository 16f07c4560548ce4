"""``Predictor``: any-size inputs, resize + pad geometry, batching, weight loading."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import dataclasses

from kmax_deeplab import build_model
from kmax_deeplab.checkpoints.native import save_native
from kmax_deeplab.config import apply_overrides, get_preset
from kmax_deeplab.engine.predictor import Predictor, fit_size, load_image, preprocess
from kmax_deeplab.modeling import families
from predict_fakes import BrightnessModel, small_meta

CANVAS = 65


def tiny_cfg(size=CANVAS):
    return apply_overrides(get_preset("synthetic/kmax_tiny"), [
        f"model.image_size=[{size},{size}]", "model.num_classes=3"])


def fake_predictor(**kw):
    return Predictor(BrightnessModel(image_size=(CANVAS, CANVAS)), tiny_cfg(), meta=small_meta(),
                     **kw)


def split_image(h, w, bright_rows):
    """Bright (255) above row ``bright_rows``, dark (0) below."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:bright_rows] = 255
    return img


def category_map(result):
    cat = {s["id"]: s["category_id"] for s in result["segments_info"]}
    return np.vectorize(lambda i: cat.get(int(i), 0))(result["panoptic"])


def check_result(result, h, w):
    pan = result["panoptic"]
    assert pan.shape == (h, w) and pan.dtype == np.int32
    ids, counts = np.unique(pan, return_counts=True)
    assert {int(i): int(c) for i, c in zip(ids, counts) if i} == {
        s["id"]: s["area"] for s in result["segments_info"]}


def test_fit_size_and_padding():
    assert fit_size(37, 50, (65, 65)) == (48, 65)
    assert fit_size(50, 37, (65, 65)) == (65, 48)
    assert fit_size(640, 427, (1281, 1281)) == (1281, 855)
    assert fit_size(1024, 2048, (1025, 2049)) == (1024, 2048)  # 32k image in a 32k+1 canvas
    assert fit_size(2000, 500, (1025, 2049)) == (1025, 256)
    img = np.full((10, 20, 3), 200, np.uint8)
    batch, valid = preprocess([img], (65, 65))
    # bytedance's test resize (detectron2 ResizeShortestEdge): 10 * 65/20 = 32.5 -> int(33.0) = 33
    assert valid == [(33, 65)] and tuple(batch.shape) == (1, 3, 65, 65)
    assert (batch[0, :, :33] == 200).all() and (batch[0, :, 33:] == 127.5).all()


def test_maps_come_back_at_the_original_size_in_the_right_place():
    """37x50 image, bright above row 20. Canvas 65: valid 48x65, bright canvas rows < 26.
    The stride-4 logits blur the edge by < 4 canvas px (3 original px): rows 0..16 must be
    the bright class and rows 24..36 the dark one. Resizing the whole padded canvas to 37
    rows instead would move the edge to row ~15 and fail."""
    pred = fake_predictor()
    result = pred(split_image(37, 50, 20))
    check_result(result, 37, 50)
    cats = category_map(result)
    assert (cats[:17] == 1).all() and (cats[24:] == 5).all()
    assert [s["isthing"] for s in sorted(result["segments_info"], key=lambda s: s["category_id"])] \
        == [True, False]


def test_numpy_pil_and_path_inputs_of_odd_sizes(tmp_path):
    pred = fake_predictor()
    a = split_image(23, 61, 11)
    b = Image.fromarray(split_image(59, 17, 30)).convert("L")  # grey PIL image
    path = tmp_path / "c.png"
    Image.fromarray(split_image(41, 41, 20)).save(path)
    results = pred([a, b, path])
    for r, (h, w) in zip(results, [(23, 61), (59, 17), (41, 41)]):
        check_result(r, h, w)
        assert sorted(s["category_id"] for s in r["segments_info"]) == [1, 5]


def test_batches_equal_single_images_and_semantic_output():
    images = [split_image(23, 61, 11), split_image(37, 50, 20), split_image(40, 30, 5)]
    pred = fake_predictor(batch_size=2)
    batched = pred(images, semantic=True)
    for img, r in zip(images, batched):
        single = pred(img, semantic=True)
        assert np.array_equal(single["panoptic"], r["panoptic"])
        assert single["segments_info"] == r["segments_info"]
        # semantic train ids agree with the panoptic classes wherever a segment was painted
        assert r["semantic"].dtype == np.int64 and r["semantic"].shape == img.shape[:2]
        cats = category_map(r)
        assert (r["semantic"][cats == 1] == 0).all() and (r["semantic"][cats == 5] == 1).all()


def test_bf16_autocast_runs():
    r = fake_predictor(dtype="bf16")(split_image(37, 50, 20))
    check_result(r, 37, 50)
    with pytest.raises(ValueError, match="dtype"):
        fake_predictor(dtype="int8")


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")


@pytest.fixture
def fake_build(monkeypatch):
    """A family row ``brightness``: kMaX's parts, but the model is the brightness fake."""
    row = dataclasses.replace(families.FAMILIES["kmax"], name="brightness",
                              build_model=lambda cfg: BrightnessModel(image_size=tuple(cfg.model.image_size)))
    monkeypatch.setitem(families.FAMILIES, "brightness", row)


def test_from_config_loads_native_folder_and_safetensors(tmp_path, fake_build):
    cfg = apply_overrides(tiny_cfg(), ["model.meta_architecture=brightness"])
    model = BrightnessModel(image_size=(CANVAS, CANVAS))
    with torch.no_grad():
        model.scale.fill_(-1.0)  # swaps bright and dark: visible in the prediction
    save_native(tmp_path / "ckpt", model.state_dict(), cfg)
    save_file(dict(model.state_dict()), str(tmp_path / "w.safetensors"))
    img = split_image(37, 50, 20)
    for weights in (tmp_path / "ckpt", tmp_path / "w.safetensors"):
        pred = Predictor.from_config(cfg, weights, meta=small_meta())
        cats = category_map(pred(img))
        assert (cats[:17] == 5).all() and (cats[24:] == 1).all()
    pred = Predictor.from_pretrained(tmp_path / "ckpt", meta=small_meta())
    assert float(pred.model.scale.detach()) == -1.0
    with pytest.warns(UserWarning, match="RANDOM"):
        Predictor.from_config(cfg, None, meta=small_meta())


def test_weights_that_do_not_fit_are_rejected_with_the_keys(tmp_path, fake_build):
    cfg = apply_overrides(tiny_cfg(), ["model.meta_architecture=brightness"])
    save_file({"scale": torch.ones(()), "extra.weight": torch.ones(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"w.safetensors.*missing: class_logits.*unexpected: extra"):
        Predictor.from_config(cfg, tmp_path / "w.safetensors", meta=small_meta())
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="w.pth.*kmax convert"):
        Predictor.from_config(cfg, tmp_path / "w.pth", meta=small_meta())


@pytest.mark.slow
def test_tiny_preset_with_random_weights_on_odd_sizes():
    """The real model (tiny preset, random weights) through the whole path."""
    cfg = apply_overrides(get_preset("synthetic/kmax_tiny"), [
        "postprocess.thing_threshold=0.0", "postprocess.stuff_threshold=0.0",
        "postprocess.overlap_threshold=0.0", "postprocess.pixel_confidence_threshold=0.0"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pred = Predictor.from_config(cfg, None, batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(45, 97), (130, 31)]]
    results = pred(images + [Image.fromarray(images[0])], semantic=True)
    for r, (h, w) in zip(results, [(45, 97), (130, 31), (45, 97)]):
        check_result(r, h, w)
        assert len(r["segments_info"]) == 1  # pixel threshold 0: the top query takes all
        assert r["semantic"].shape == (h, w) and r["semantic"].max() < 7
    assert np.array_equal(results[0]["panoptic"], results[2]["panoptic"])


def test_channels_last_gives_the_same_prediction():
    """The default channels_last layout is a speed choice only: same panoptic map."""
    cfg = apply_overrides(get_preset("synthetic/kmax_tiny"), [
        "postprocess.thing_threshold=0.0", "postprocess.stuff_threshold=0.0",
        "postprocess.overlap_threshold=0.0", "postprocess.pixel_confidence_threshold=0.1"])
    torch.manual_seed(0)
    model = build_model(cfg)
    image = np.random.default_rng(1).integers(0, 256, (77, 101, 3), dtype=np.uint8)
    fast = Predictor(model, cfg, channels_last=True)
    assert fast.model.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    a = fast.forward_batch([image])
    b = Predictor(model, cfg, channels_last=False).forward_batch([image])
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a["pred_masks"], b["pred_masks"], rtol=1e-4, atol=1e-4)
