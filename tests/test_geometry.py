"""Input geometries declared by the families: fixed canvas (kMaX) and resize + pad-to-32 (K-Net)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kmax_deeplab.data.loader import collate_panoptic
from kmax_deeplab.data.transforms import ResizeShortLong, short_long_size
from kmax_deeplab.geometry import IMAGENET_MEAN, FixedCanvas, ResizePad


def test_short_long_size_follows_mmcv_rescale_rounding():
    # COCO 480x640: s = min(1333/640, 800/480) = 5/3 -> 800 x int(1066.67 + 0.5)
    assert short_long_size(480, 640, 800, 1333) == (800, 1067)
    # a long panorama is limited by the long side: s = 1333/2000
    assert short_long_size(500, 2000, 800, 1333) == (333, 1333)
    assert short_long_size(427, 640, 800, 1333) == (800, 1199)  # 640*800/427 = 1199.06


def test_resize_pad_batch_is_padded_to_32_with_the_mean():
    g = ResizePad(short=40, long=64)
    a = np.full((30, 20, 3), 255, np.uint8)   # -> s = min(64/30, 40/20) = 2 -> 60x40
    b = np.zeros((20, 50, 3), np.uint8)       # -> s = min(64/50, 40/20) = 1.28 -> 26x64
    batch, valid = g.preprocess([a, b])
    assert valid == [(60, 40), (26, 64)]
    assert tuple(batch.shape) == (2, 3, 64, 64)  # max 60 x 64, rounded up to 32
    assert (batch[0, :, :60, :40] == 255).all() and (batch[1, :, :26, :64] == 0).all()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1)
    assert torch.equal(batch[0, :, 60:, :].flatten(1)[:, :1], mean)
    assert torch.equal(batch[1, :, 26:, :].reshape(3, -1), mean.expand(3, 38 * 64))
    fixed, fvalid = FixedCanvas((65, 65)).preprocess([a])
    assert tuple(fixed.shape) == (1, 3, 65, 65) and fvalid == [(65, 43)]
    assert (fixed[0, :, :, 43:] == 127.5).all()


def _sample(h, w, c=3):
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, : h // 2] = True
    masks[1, h // 2:] = True
    semantic = torch.where(masks[0], torch.tensor(0), torch.tensor(1))
    return {"image": torch.full((3, h, w), 10.0), "masks": masks, "labels": torch.tensor([0, 1]),
            "void": torch.zeros(h, w, dtype=torch.bool), "semantic": semantic, "valid_size": (h, w)}


def test_collate_pads_variable_sizes_and_marks_padding_void():
    batch = collate_panoptic([_sample(20, 30), _sample(33, 10)], size_divisor=32,
                             pad_value=IMAGENET_MEAN, ignore_label=7)
    assert tuple(batch["images"].shape) == (2, 3, 64, 32)
    t0, t1 = batch["targets"]
    assert tuple(t0["masks"].shape) == (2, 64, 32) and tuple(t1["void"].shape) == (64, 32)
    assert t0["void"][:20, :30].sum() == 0 and t0["void"].sum() == 64 * 32 - 20 * 30
    assert not t0["masks"][:, 20:].any() and not t0["masks"][:, :, 30:].any()
    assert (t1["semantic"][33:] == 7).all() and (t1["semantic"][:33, :10] < 2).all()
    assert t0["valid_size"] == (20, 30)
    assert torch.equal(batch["images"][0, :, 20:, 0], torch.tensor(IMAGENET_MEAN).view(3, 1).expand(3, 44))
    with pytest.raises(ValueError, match="ignore_label"):
        collate_panoptic([_sample(20, 30), _sample(33, 10)])
    # equal sizes: the plain stack, untouched (fixed-canvas families)
    same = [_sample(17, 17), _sample(17, 17)]
    plain = collate_panoptic(same)
    assert torch.equal(plain["images"], torch.stack([s["image"] for s in same]))
    assert plain["targets"][0]["masks"] is same[0]["masks"]


def test_resize_short_long_transform_draws_the_short_side():
    record = {"image": np.zeros((40, 80, 3), np.uint8), "panoptic": np.zeros((40, 80), np.int32),
              "segments": []}
    sizes = {ResizeShortLong((20, 30), 200)(record, np.random.default_rng(i))["panoptic"].shape
             for i in range(40)}
    assert {s[0] for s in sizes} <= set(range(20, 31)) and len(sizes) > 3
    assert all(w == 2 * h for h, w in sizes)
    assert ResizeShortLong(20, 30)(record)["valid_size"] == (15, 30)  # long side limits
