"""Property tests of the joint image/target transforms (hypothesis, tiny images)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.record import PAD_ID, build_sample
from kmax_deeplab.data.transforms import (
    PAD_VALUE, LargeScaleJitter, ResizeLongestAndPad, count_valid_stride4, hflip, resize_longest_and_pad,
)

META = get_dataset_meta("synthetic")
SETTINGS = settings(max_examples=25, deadline=None)


def colour_of(ids: np.ndarray) -> np.ndarray:
    """A distinct RGB colour per segment id (ids < 64 here), as float32 [.., 3]."""
    return np.stack([(ids * 37) % 251, (ids * 91) % 241, (ids * 13) % 239], -1).astype(np.float32)


@st.composite
def records(draw):
    h = draw(st.integers(3, 20))
    w = draw(st.integers(3, 20))
    n = draw(st.integers(1, 5))
    seg_ids = draw(st.lists(st.integers(1, 60), min_size=n, max_size=n, unique=True))
    grid = draw(st.lists(st.integers(0, n), min_size=h * w, max_size=h * w))
    lut = np.array([0] + seg_ids)
    ids = lut[np.array(grid).reshape(h, w)]
    segs = []
    for sid in seg_ids:
        if (ids == sid).any():
            t = draw(st.integers(0, 6))
            segs.append({"id": sid, "category_id": t + 1, "train_id": t, "iscrowd": draw(st.integers(0, 1))})
    image = colour_of(ids)
    return {"image": image, "panoptic": ids, "segments": segs, "image_id": 0, "file_name": "x", "height": h,
            "width": w}


@st.composite
def jitters(draw):
    crop = (draw(st.integers(5, 24)), draw(st.integers(5, 24)))
    lo = draw(st.floats(0.3, 1.5))
    hi = lo + draw(st.floats(0.0, 1.0))
    return crop, lo, hi


@SETTINGS
@given(rec=records(), jit=jitters(), seed=st.integers(0, 2**31))
def test_nearest_jitter_keeps_masks_aligned_pads_void_invents_nothing(rec, jit, seed):
    crop, lo, hi = jit
    t = LargeScaleJitter(crop, lo, hi, flip=True, min_valid_pixels=-1, image_mode="nearest")
    out = t(rec, np.random.default_rng(seed))
    ids, img = out["panoptic"], out["image"]
    assert ids.shape == crop and img.shape == crop + (3,)
    pad = ids == PAD_ID
    vh, vw = out["valid_size"]
    assert not pad[:vh, :vw].any() and pad[vh:].all() and pad[:, vw:].all()  # bottom/right only
    assert np.all(img[pad] == PAD_VALUE)
    # Image follows the ids exactly (both resampled with the same nearest map).
    np.testing.assert_array_equal(img[~pad], colour_of(ids[~pad]))
    s = build_sample(out, META)
    before = {x["id"]: x for x in rec["segments"]}
    assert set(s["segment_ids"].tolist()) <= set(before)  # no invented segment id
    for k, sid in enumerate(s["segment_ids"].tolist()):
        assert bool(s["is_crowd"][k]) == bool(before[sid]["iscrowd"])  # crowd flags survive
        assert int(s["labels"][k]) == before[sid]["train_id"]
        assert np.array_equal(s["masks"][k].numpy(), ids == sid)
    assert bool(s["void"][torch.from_numpy(pad)].all())  # padding is void
    assert bool((s["semantic"][torch.from_numpy(pad)] == META.num_classes).all())


@SETTINGS
@given(rec=records(), jit=jitters(), seed=st.integers(0, 2**31))
def test_bilinear_image_agrees_with_ids_inside_segments(rec, jit, seed):
    crop, lo, hi = jit
    out = LargeScaleJitter(crop, lo, hi, min_valid_pixels=-1)(rec, np.random.default_rng(seed))
    ids, img = out["panoptic"], out["image"]
    # Bilinear blending reaches half a source pixel (f/2 output pixels at upscale f) past
    # the nearest-neighbour boundary, plus one pixel of rounding: margin 2 up to f = 2
    # (5x5 neighbourhood), wider for the larger upscales the strategy can draw.
    f_max = hi * min(crop[0] / rec["panoptic"].shape[0], crop[1] / rec["panoptic"].shape[1])
    r = max(2, math.ceil(f_max / 2) + 1)
    for sid in np.unique(ids):
        # Pixels whose (2r+1)^2 neighbourhood is one segment see only that colour after resampling.
        inner = ndimage.binary_erosion(ids == sid, structure=np.ones((2 * r + 1, 2 * r + 1)), border_value=0)
        if sid != PAD_ID and inner.any():
            np.testing.assert_allclose(img[inner], colour_of(np.full(int(inner.sum()), sid)), atol=1e-3)


@SETTINGS
@given(rec=records())
def test_flip_is_exact_and_involutive(rec):
    f = hflip(rec)
    np.testing.assert_array_equal(f["panoptic"], rec["panoptic"][:, ::-1])
    np.testing.assert_array_equal(f["image"], rec["image"][:, ::-1])
    ff = hflip(f)
    np.testing.assert_array_equal(ff["panoptic"], rec["panoptic"])
    s, sf = build_sample(rec, META), build_sample(f, META)
    assert torch.equal(sf["masks"], s["masks"].flip(-1)) and torch.equal(sf["labels"], s["labels"])


@SETTINGS
@given(rec=records(), seed=st.integers(0, 2**31))
def test_same_seed_same_output(rec, seed):
    t = LargeScaleJitter((11, 13), 0.5, 1.5, min_valid_pixels=-1)
    a, b = t(rec, np.random.default_rng(seed)), t(rec, np.random.default_rng(seed))
    np.testing.assert_array_equal(a["panoptic"], b["panoptic"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_resampling_respects_min_valid_pixels():
    # A 40x40 image with one small segment in a corner: most crops miss it.
    ids = np.zeros((40, 40), np.int64)
    ids[:8, :8] = 5
    rec = {"image": colour_of(ids), "panoptic": ids, "segments": [{"id": 5, "category_id": 1, "train_id": 0,
                                                                  "iscrowd": 0}],
           "image_id": 0, "file_name": "x", "height": 40, "width": 40}
    t = LargeScaleJitter((33, 33), 1.5, 2.0, flip=False, min_valid_pixels=3, max_tries=200)
    for seed in range(10):
        valid, nseg = count_valid_stride4(t(rec, np.random.default_rng(seed)))
        assert valid > 3 and nseg == 1
    # Without the check, some crops have no segment at all.
    t0 = LargeScaleJitter((33, 33), 1.5, 2.0, flip=False, min_valid_pixels=-1)
    assert any(count_valid_stride4(t0(rec, np.random.default_rng(s)))[1] == 0 for s in range(30))


def test_crowd_pixels_do_not_count_as_valid():
    ids = np.full((16, 16), 5, np.int64)
    rec = {"image": colour_of(ids), "panoptic": ids, "segments": [{"id": 5, "category_id": 1, "train_id": 0,
                                                                  "iscrowd": 1}]}
    assert count_valid_stride4(rec) == (0, 0)


@pytest.mark.parametrize("hw,size,valid", [((40, 20), (17, 17), (17, 9)), ((10, 30), (33, 33), (11, 33)),
                                           ((17, 17), (17, 17), (17, 17))])
def test_resize_longest_and_pad(hw, size, valid):
    ids = np.arange(hw[0] * hw[1]).reshape(hw) % 7 + 1
    rec = {"image": colour_of(ids), "panoptic": ids,
           "segments": [{"id": i, "category_id": i, "train_id": i - 1, "iscrowd": 0} for i in range(1, 8)]}
    out = ResizeLongestAndPad(size)(rec)
    assert out["valid_size"] == valid and out["panoptic"].shape == size
    assert np.all(out["panoptic"][valid[0]:] == PAD_ID) and np.all(out["panoptic"][:, valid[1]:] == PAD_ID)
    canvas, vs = resize_longest_and_pad(torch.full((3,) + hw, 10.0), size)
    assert vs == valid and canvas.shape == (3,) + size
    assert torch.allclose(canvas[:, :valid[0], :valid[1]], torch.tensor(10.0), atol=1e-4) and torch.all(canvas[:, valid[0]:] == PAD_VALUE)
