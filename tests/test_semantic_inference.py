"""Semantic inference (``engine/semantic_inference.py``) against mmseg 0.30's own
``EncoderDecoder.inference`` / ``slide_inference`` / ``aug_test`` and ``MultiScaleFlipAug``
(fixture: ``tools/record_mmseg_semantic_inference.py``), and a hand-counted sliding window."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kmax_deeplab.engine.semantic_inference import (SemanticTestConfig, semantic_inference, slide_inference,
                                                    scaled_test_size)

GOLDEN = Path(__file__).parent / "data" / "semantic" / "mmseg_semantic_inference.npz"


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN)
    return {k: data[k] for k in data.files}, json.loads(bytes(data["meta_json"]).decode())


def stand_in(align_corners: bool):
    """The recorder's decode function: pool 2x2 (ceil), seeded 3x3 conv, mmseg's resize to the input."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))

    def model_fn(x):
        with torch.no_grad():
            y = conv(F.avg_pool2d(x / 64.0, 2, stride=2, ceil_mode=True))
            return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=align_corners)
    return model_fn


def config_of(case: dict) -> SemanticTestConfig:
    t, aug = case["test_cfg"], case["aug"]
    return SemanticTestConfig(mode=t["mode"], crop_size=tuple(t.get("crop_size", (512, 512))),
                              stride=tuple(t.get("stride", (341, 341))), flip=aug.get("flip", False),
                              flip_direction=aug.get("flip_direction", "horizontal"),
                              scales=tuple(aug.get("img_ratios") or (1.0,)),
                              img_scale=aug["img_scale"], align_corners=case["align_corners"])


CASES = ("whole", "slide", "slide_align", "slide_big_crop", "whole_ms_flip", "slide_ms_flip2", "whole_ratios_only")


@pytest.mark.parametrize("name", CASES)
def test_equals_mmseg(golden, name):
    arrays, meta = golden
    case = meta["cases"][name]
    cfg = config_of(case)
    asked = []

    def mmcv_resized(image, size):  # the pixels mmseg's pipeline produced at that size
        asked.append(list(size))
        return arrays[f"resized_{size[0]}x{size[1]}"]

    probs = semantic_inference(stand_in(cfg.align_corners), arrays["image"], cfg, resize_image=mmcv_resized)
    # the passes: sizes (the test Resize rule per ratio), flips and order of MultiScaleFlipAug
    assert asked == [p["img_shape"] for p in case["passes"]]
    assert [(r, d) for r, d in cfg.augmentations()] == [
        (r, p["flip_direction"] if p["flip"] else None)
        for r, p in zip([r for r in cfg.scales for _ in range(len(case["passes"]) // len(cfg.scales))],
                        case["passes"])]
    ref = torch.from_numpy(arrays[f"{name}_probs"])
    assert probs.shape == ref.shape == (5, 23, 37)
    torch.testing.assert_close(probs, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(probs.argmax(0).numpy(), arrays[f"{name}_pred"])


@pytest.mark.parametrize("name", ("slide", "slide_align", "slide_big_crop", "slide_ms_flip2"))
def test_slide_raw_equals_mmseg(golden, name):
    arrays, meta = golden
    case = meta["cases"][name]
    cfg = config_of(case)
    p = case["passes"][0]
    img = arrays[f"resized_{p['img_shape'][0]}x{p['img_shape'][1]}"]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    if p["flip"]:
        x = x.flip(-1)
    out = slide_inference(stand_in(cfg.align_corners), x, cfg.crop_size, cfg.stride)
    torch.testing.assert_close(out[0], torch.from_numpy(arrays[f"{name}_slide_raw"]), rtol=1e-5, atol=1e-6)


def test_slide_hand_counted():
    """10x7 image, 4x4 windows every 3: rows [0,4) [3,7) [6,10), columns [0,4) [3,7); window k
    (row-major) predicts the constant k, so each pixel holds the mean of the k covering it."""
    calls = []

    def model_fn(x):
        calls.append(tuple(x.shape[-2:]))
        return torch.full((1, 2, *x.shape[-2:]), float(len(calls) - 1))

    out = slide_inference(model_fn, torch.zeros(1, 3, 10, 7), (4, 4), (3, 3))
    assert calls == [(4, 4)] * 6
    rows = [[0], [0], [0], [0, 1], [1], [1], [1, 2], [2], [2], [2]]
    cols = [[0], [0], [0], [0, 1], [1], [1], [1]]
    expected = torch.tensor([[float(np.mean([2 * r + c for r in rr for c in cc])) for cc in cols] for rr in rows])
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[0, 1], expected)
    # pixel (3, 3) is covered by all 4 windows of the first two rows: (0 + 1 + 2 + 3) / 4
    assert out[0, 0, 3, 3] == 1.5


def test_slide_window_larger_than_image_is_the_image():
    calls = []

    def model_fn(x):
        calls.append(tuple(x.shape[-2:]))
        return x[:, :1] * 2

    x = torch.arange(5 * 6, dtype=torch.float32).reshape(1, 1, 5, 6).expand(1, 3, 5, 6)
    out = slide_inference(model_fn, x, (8, 8), (3, 3))
    assert calls == [(5, 6)]
    torch.testing.assert_close(out, x[:, :1] * 2)


def scaled_test_size_rule():
    cfg = SemanticTestConfig()  # ADE20K (2048, 512)
    assert scaled_test_size(480, 640, cfg, 1.0) == (512, 683)   # 512/480 = 1.0667: int(682.67 + 0.5)
    assert scaled_test_size(480, 640, cfg, 0.5) == (256, 341)
    assert scaled_test_size(256, 4096, cfg, 1.0) == (128, 2048)  # the long side binds
    assert scaled_test_size(480, 640, SemanticTestConfig(img_scale=None), 1.0) == (480, 640)


def test_config_from_sections_and_errors():
    class Pp:  # a postprocess section as a plain object
        def __init__(self):
            self.mode, self.crop_size, self.stride, self.flip, self.other = "slide", 64, [32, 16], True, 1

    class Cfg:
        postprocess = Pp()
        test = {"scales": [0.5, 1.0]}

    cfg = SemanticTestConfig.from_config(Cfg())
    assert (cfg.mode, cfg.crop_size, cfg.stride, cfg.flip, cfg.scales) == ("slide", (64, 64), (32, 16), True,
                                                                           (0.5, 1.0))
    assert SemanticTestConfig.from_config(object()) == SemanticTestConfig()
    for bad, word in ((dict(mode="tiles"), "mode"), (dict(stride=0), "stride"), (dict(crop_size="a"), "crop_size"),
                      (dict(flip_direction="diagonal"), "flip_direction"), (dict(scales=(0.0,)), "scales")):
        with pytest.raises(ValueError, match=word):
            SemanticTestConfig(**bad)


def test_bad_model_output_is_named():
    with pytest.raises(ValueError, match="resized to the input"):
        semantic_inference(lambda x: x[:, :, ::2], np.zeros((8, 8, 3), np.uint8), SemanticTestConfig(img_scale=None))


def test_config_of_the_knet_semantic_presets():
    """The semantic K-Net presets: whole image at the 2048x512 test scale (their model.image_size)."""
    from kmax_deeplab.config import load_config

    for head in ("fcn", "upernet"):
        cfg = SemanticTestConfig.from_config(load_config(f"ade20k/knet_r50_d8_{head}_512"))
        assert (cfg.mode, cfg.flip, cfg.scales, cfg.align_corners) == ("whole", False, (1.0,), False)
        assert scaled_test_size(480, 640, cfg, 1.0) == (512, 683)
        assert scaled_test_size(480, 640, cfg, 1.0) == scaled_test_size(480, 640, SemanticTestConfig(), 1.0)
    slide = SemanticTestConfig.from_config(load_config("ade20k/knet_r50_d8_upernet_512", [
        "postprocess.mode=slide", "postprocess.flip=true", "postprocess.scales=[0.5,1.0]"]))
    assert (slide.mode, slide.crop_size, slide.stride, slide.flip, slide.scales) == (
        "slide", (512, 512), (341, 341), True, (0.5, 1.0))
