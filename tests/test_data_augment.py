"""Colour jitter and panoptic copy-paste (spec §4, BD dataset mapper): property tests on tiny records."""

from __future__ import annotations

import colorsys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
from kmax_deeplab.data.copy_paste import PASTE_ID_OFFSET, PanopticCopyPaste, paste_panoptic
from kmax_deeplab.data.photometric import ColorAugSSD, saturate_and_shift_hue
from kmax_deeplab.data.record import PAD_ID, build_sample
from kmax_deeplab.data.synthetic import write_synthetic_dataset
from kmax_deeplab.data.transforms import LargeScaleJitter, build_transforms, pad_to

META = get_dataset_meta("synthetic")  # train ids 0..3 things, 4..6 stuff
SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def records(draw, h=None, w=None, id_base=1):
    """A record with <= 1 stuff segment per class, random crowd flags, uint8 image, maybe padded."""
    h = h or draw(st.integers(4, 9))
    w = w or draw(st.integers(4, 9))
    stuff = draw(st.lists(st.integers(4, 6), max_size=3, unique=True))
    things = draw(st.lists(st.integers(0, 3), max_size=4))
    labels = stuff + things
    n = len(labels)
    grid = np.array(draw(st.lists(st.integers(0, n), min_size=h * w, max_size=h * w))).reshape(h, w)
    ids = np.where(grid > 0, grid + id_base - 1, 0).astype(np.int32)
    segs = []
    for k, t in enumerate(labels):
        sid = id_base + k
        if (ids == sid).any():
            segs.append({"id": sid, "category_id": t + 1, "train_id": t, "isthing": t < 4,
                         "iscrowd": int(t < 4 and draw(st.integers(0, 3)) == 0)})
    image = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    rec = {"image": image, "panoptic": ids, "segments": segs, "image_id": id_base, "file_name": f"r{id_base}",
           "height": h, "width": w}
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    return pad_to(rec, (h + ph, w + pw)) if ph or pw else rec


@st.composite
def pairs(draw):
    h, w = draw(st.integers(4, 9)), draw(st.integers(4, 9))
    a = draw(records(h=h, w=w, id_base=1))
    b = draw(records(h=a["panoptic"].shape[0], w=a["panoptic"].shape[1], id_base=1))  # ids collide on purpose
    # pad_to may have grown one record; bring both to the larger canvas.
    size = (max(a["panoptic"].shape[0], b["panoptic"].shape[0]), max(a["panoptic"].shape[1], b["panoptic"].shape[1]))
    return pad_to(a, size), pad_to(b, size)


# --------------------------------------------------------------------------- colour jitter

@SETTINGS
@given(rec=records(), seed=st.integers(0, 2**31))
def test_color_jitter_changes_only_the_image_and_is_seeded(rec, seed):
    j = ColorAugSSD()
    out = j.apply(rec, np.random.default_rng(seed))
    assert out["panoptic"] is rec["panoptic"] and out["segments"] is rec["segments"]
    assert out["image"].dtype == np.uint8 and out["image"].shape == rec["image"].shape
    np.testing.assert_array_equal(out["image"], j.apply(rec, np.random.default_rng(seed))["image"])
    f = j(rec["image"].astype(np.float32), np.random.default_rng(seed))  # float input: same result, float out
    assert f.dtype == np.float32 and f.min() >= 0 and f.max() <= 255
    np.testing.assert_array_equal(f, out["image"])


def test_color_jitter_changes_images_for_some_seeds_and_respects_ranges():
    img = np.random.default_rng(0).integers(30, 220, (8, 8, 3), dtype=np.uint8)
    outs = [ColorAugSSD()(img, np.random.default_rng(s)) for s in range(20)]
    assert sum(not np.array_equal(o, img) for o in outs) >= 10  # each step fires with p = 0.5
    # Brightness only (other ranges degenerate): a uniform shift by |beta| <= 32, then uint8 truncation.
    b_only = ColorAugSSD(contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0)
    for s in range(20):
        d = b_only(img, np.random.default_rng(s)).astype(int) - img
        assert np.unique(d).size <= 2 and np.abs(d).max() <= 32  # truncation of +beta: floor(x+beta)-x


def test_saturation_and_hue_match_colorsys():
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for sat, steps in ((1.4, None), (0.6, 9), (None, -18), (1.0, 0)):
        out = saturate_and_shift_hue(img, sat, steps)
        for p, q in zip(img.reshape(-1, 3), out.reshape(-1, 3)):
            h, s, v = colorsys.rgb_to_hsv(*(p / 255.0))
            h = (h + (steps or 0) * 2 / 360.0) % 1.0
            s = min(s * (sat if sat is not None else 1.0), 1.0)
            want = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255
            assert np.abs(want - q).max() <= 1.0, (p, q, want)
    grey = np.full((2, 2, 3), 77, np.uint8)
    np.testing.assert_array_equal(saturate_and_shift_hue(grey, 1.5, 10), grey)


@SETTINGS
@given(rec=records(), seed=st.integers(0, 2**31))
def test_jitter_inside_lsj_leaves_targets_identical(rec, seed):
    class Passthrough:
        """Draws exactly what ColorAugSSD draws, but returns the image unchanged."""

        def __call__(self, image, rng):
            ColorAugSSD()(image, rng)
            return image

    kw = dict(crop_size=(9, 11), min_scale=0.5, max_scale=1.5, min_valid_pixels=-1)
    a = LargeScaleJitter(color_jitter=ColorAugSSD(), **kw)(rec, np.random.default_rng(seed))
    b = LargeScaleJitter(color_jitter=Passthrough(), **kw)(rec, np.random.default_rng(seed))
    np.testing.assert_array_equal(a["panoptic"], b["panoptic"])
    sa, sb = build_sample(a, META), build_sample(b, META)
    for key in ("masks", "labels", "is_crowd", "void", "semantic", "segment_ids"):
        assert torch.equal(sa[key], sb[key]), key
    pad = torch.from_numpy(a["panoptic"] == PAD_ID)
    assert bool((sa["image"][:, pad] == 127.5).all())  # padding never jittered
    assert float(sa["image"].min()) >= 0 and float(sa["image"].max()) <= 255


# --------------------------------------------------------------------------- copy-paste

def _sample_ok(s):
    covered = s["masks"][~s["is_crowd"]].any(0)
    assert len(s["masks"]) == 0 or int(s["masks"].sum(0).max()) <= 1  # one segment per pixel at most
    assert bool((s["void"] == ~covered).all())  # every pixel: exactly one of (segment, void)
    assert bool(((s["semantic"] == META.num_classes) == s["void"]).all())


@SETTINGS
@given(pair=pairs(), seed=st.integers(0, 2**31))
def test_paste_properties(pair, seed):
    a, b = pair
    out = paste_panoptic(a, b, np.random.default_rng(seed))
    again = paste_panoptic(a, b, np.random.default_rng(seed))
    np.testing.assert_array_equal(out["panoptic"], again["panoptic"])  # reproducible
    np.testing.assert_array_equal(out["image"], again["image"])
    ids = out["panoptic"]
    s = build_sample(out, META)
    _sample_ok(s)
    src_a = {x["id"]: x for x in a["segments"]}
    src_b = {x["id"] + PASTE_ID_OFFSET: x for x in b["segments"]}
    for k, sid in enumerate(s["segment_ids"].tolist()):
        src = src_a.get(sid) or src_b.get(sid)
        assert src is not None, f"invented id {sid}"
        assert int(s["labels"][k]) == src["train_id"] and bool(s["is_crowd"][k]) == bool(src["iscrowd"])
        if sid in src_b:
            assert not src["iscrowd"]  # crowd segments of the second image are never pasted
    # Every non-crowd thing of the second image is pasted, with its pixels and colours.
    for x in b["segments"]:
        region = b["panoptic"] == x["id"]
        if x["isthing"] and not x["iscrowd"]:
            assert bool((ids[region] == x["id"] + PASTE_ID_OFFSET).all())
            np.testing.assert_array_equal(out["image"][region], b["image"][region])
        if x["iscrowd"]:
            assert not (ids == x["id"] + PASTE_ID_OFFSET).any()
    # Each non-crowd segment of the second image is pasted whole (its colours, its id or the
    # id of the first image's stuff of the same class) or not at all; other pixels are untouched.
    outside = np.ones(ids.shape, dtype=bool)
    for x in b["segments"]:
        if x["iscrowd"]:
            continue
        region = b["panoptic"] == x["id"]
        outside &= ~region
        targets = {x["id"] + PASTE_ID_OFFSET} | {y["id"] for y in a["segments"]
                                                 if not x["isthing"] and y["train_id"] == x["train_id"]}
        pasted = (np.isin(ids[region], list(targets)).all()
                  and np.array_equal(out["image"][region], b["image"][region]))
        untouched = (np.array_equal(ids[region], a["panoptic"][region])
                     and np.array_equal(out["image"][region], a["image"][region]))
        assert pasted or untouched, x
    np.testing.assert_array_equal(ids[outside], a["panoptic"][outside])
    np.testing.assert_array_equal(out["image"][outside], a["image"][outside])
    # Stuff present in both ends up as one segment, carrying the first image's id.
    for t in range(4, 7):
        segs = [k for k in range(len(s["labels"])) if int(s["labels"][k]) == t and not s["is_crowd"][k]]
        assert len(segs) <= 1
        in_a = [x["id"] for x in a["segments"] if x["train_id"] == t and (ids == x["id"]).any()]
        if segs and in_a:
            assert int(s["segment_ids"][segs[0]]) == in_a[0]
    # Crowd segments of the first image that keep pixels keep their flag.
    for x in a["segments"]:
        if x["iscrowd"] and (ids == x["id"]).any():
            k = s["segment_ids"].tolist().index(x["id"])
            assert bool(s["is_crowd"][k])
    # Padding is exactly what neither image covers.
    np.testing.assert_array_equal(ids == PAD_ID, (a["panoptic"] == PAD_ID) & (ids == PAD_ID))


def _seg(sid, train_id, crowd=0):
    return {"id": sid, "category_id": train_id + 1, "train_id": train_id, "isthing": train_id < 4, "iscrowd": crowd}


def _paste_outcomes(a, b):
    """Panoptic maps over 40 seeds, keyed by whether the second image's stuff was pasted."""
    outs = {}
    for seed in range(40):  # k ~ U{0..2}: the stuff is pasted with probability 1/2
        out = paste_panoptic(a, b, np.random.default_rng(seed))
        outs[bool(np.isin(out["panoptic"][0], [7, 3 + PASTE_ID_OFFSET]).all())] = out
    return outs


def test_paste_merges_stuff_by_hand():
    S = 5 + PASTE_ID_OFFSET  # the pasted square
    # First: sky (train 4, id 7) in columns 0-1, a disc (id 3) in columns 2-3.
    # Second: sky (id 3, colliding with the disc's id) in row 0, a square (id 5) at bottom right.
    a = {"image": np.zeros((3, 4, 3), np.uint8), "panoptic": np.array([[7, 7, 3, 3]] * 3, np.int32),
         "file_name": "a", "image_id": 1, "height": 3, "width": 4, "segments": [_seg(7, 4), _seg(3, 0)]}
    b = {"image": np.full((3, 4, 3), 200, np.uint8), "file_name": "b", "segments": [_seg(3, 4), _seg(5, 1)],
         "panoptic": np.array([[3, 3, 3, 3], [0, 0, 5, 5], [0, 0, 5, 5]], np.int32)}
    outs = _paste_outcomes(a, b)
    # Sky pasted: merged into the first image's sky (id 7); the disc is fully covered and gone.
    np.testing.assert_array_equal(outs[True]["panoptic"], [[7, 7, 7, 7], [7, 7, S, S], [7, 7, S, S]])
    np.testing.assert_array_equal(outs[False]["panoptic"], [[7, 7, 3, 3], [7, 7, S, S], [7, 7, S, S]])
    s = build_sample(outs[True], META)
    assert s["segment_ids"].tolist() == [7, S] and s["labels"].tolist() == [4, 1]
    assert s["masks"][0].sum() == 8 and bool((s["image"][:, 0] == 200).all())  # pasted sky pixels
    # When the first image's sky is fully covered, the pasted sky stays a segment of its own.
    a2 = {**a, "panoptic": np.array([[7, 7, 7, 7], [3, 3, 3, 3], [3, 3, 3, 3]], np.int32)}
    b2 = {**b, "panoptic": np.array([[3, 3, 3, 3], [0, 0, 0, 0], [0, 0, 0, 0]], np.int32)}
    np.testing.assert_array_equal(_paste_outcomes(a2, b2)[True]["panoptic"],
                                  [[3 + PASTE_ID_OFFSET] * 4, [3, 3, 3, 3], [3, 3, 3, 3]])


def test_paste_rejects_mismatched_records():
    a = {"image": np.zeros((3, 4, 3), np.uint8), "panoptic": np.ones((3, 4), np.int32), "file_name": "a",
         "segments": [{"id": 1, "category_id": 5, "train_id": 4, "iscrowd": 0}]}
    with pytest.raises(ValueError, match="canvas sizes differ"):
        paste_panoptic(a, {**a, "panoptic": np.ones((2, 4), np.int32)}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="isthing"):
        paste_panoptic(a, a, np.random.default_rng(0))


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn_aug")
    write_synthetic_dataset(root, num_train=6, num_val=0, image_size=48, seed=3)
    return root


def test_dataset_with_bd_recipe_transform(syn):
    cfg = SimpleNamespace(crop_size=(49, 49), min_scale=0.5, max_scale=1.5, flip=True, min_valid_pixels=16,
                          color_jitter=True, copy_paste=True)
    t = build_transforms(cfg, is_train=True)
    assert isinstance(t, PanopticCopyPaste) and isinstance(t.main.color_jitter, ColorAugSSD)
    assert (t.second.min_scale, t.second.max_scale) == (0.25, 0.75)  # BD scale_ratio 0.5
    assert isinstance(build_transforms(SimpleNamespace(**{**vars(cfg), "copy_paste": False}), True),
                      LargeScaleJitter)
    ds = COCOPanopticDataset(syn / "train/images", syn / "train/panoptic.json", syn / "train/panoptic", META,
                             transforms=t, seed=11)
    pasted = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 49, 49) and s["image"].dtype == torch.float32
        _sample_ok(s)
        assert torch.equal(ds[i]["masks"], s["masks"]) and torch.equal(ds[i]["image"], s["image"])  # seeded
        pasted += int((s["segment_ids"] >= PASTE_ID_OFFSET).sum())
        stuff = [int(x) for x, c in zip(s["labels"], s["is_crowd"]) if not META.is_thing(int(x)) and not c]
        assert len(stuff) == len(set(stuff))  # a stuff class is one segment after merging
    assert pasted > 0
