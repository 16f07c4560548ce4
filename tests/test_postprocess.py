"""Mask-wise panoptic merging (spec §3) on hand-built logits with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kmax_deeplab.modeling.postprocess import (
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
    semantic_probabilities,
)

BIG = 20.0  # a mask logit that owns a pixel: softmax prob 1 - O(e^-20)

# 3 classes: train 0 thing, train 1 and 2 stuff; category ids 11, 21, 22.
IS_THING = [True, False, False]
CAT_IDS = [11, 21, 22]


def cls_logits(label: int, p: float, num_classes: int = 3) -> list[float]:
    """Logits whose softmax (over C+1, void last) gives ``p`` at ``label``, the rest evenly."""
    rest = (1.0 - p) / num_classes
    return [math.log(p if c == label else rest) for c in range(num_classes + 1)]


def masks_from_owner(owners: list[np.ndarray]) -> torch.Tensor:
    """[N] boolean maps -> [N, H, W] logits: BIG where a query owns a pixel, 0 elsewhere."""
    return torch.tensor(np.stack(owners).astype(np.float32) * BIG)


def check_areas(panoptic: torch.Tensor, segments_info: list[dict]) -> None:
    """Every segment's area is its pixel count; every non-void pixel belongs to a segment."""
    ids, counts = np.unique(panoptic.numpy(), return_counts=True)
    observed = {int(i): int(c) for i, c in zip(ids, counts) if i != 0}
    assert observed == {s["id"]: s["area"] for s in segments_info}
    assert panoptic.dtype == torch.int32


def run(logits, masks, **kw):
    kw.setdefault("is_thing", IS_THING)
    kw.setdefault("train_id_to_category_id", CAT_IDS)
    result = panoptic_inference(torch.tensor(logits), masks, **kw)
    pan, info = result.panoptic, result.segments_info
    check_areas(pan, info)
    return pan, info


def region(h, w, rows, cols):
    m = np.zeros((h, w), bool)
    m[rows, cols] = True
    return m


def test_class_threshold_thing_vs_stuff_and_void():
    h, w = 4, 6
    a = region(h, w, slice(0, 2), slice(0, 3))   # thing p=0.65: below thing thr 0.7 -> void
    b = region(h, w, slice(0, 2), slice(3, 6))   # stuff p=0.65: above stuff thr 0.5 -> kept
    c = region(h, w, slice(2, 4), slice(0, 3))   # thing p=0.75 -> kept
    # region d (rows 2-3, cols 3-5): no query owns it, all logits 0 -> prob 1/3 < 0.4 -> void
    logits = [cls_logits(0, 0.65), cls_logits(1, 0.65), cls_logits(0, 0.75)]
    pan, info = run(logits, masks_from_owner([a, b, c]), thing_threshold=0.7,
                    stuff_threshold=0.5)
    by_cat = {s["category_id"]: s for s in info}
    assert sorted(by_cat) == [11, 21]
    assert by_cat[11]["isthing"] is True and by_cat[21]["isthing"] is False
    assert by_cat[11]["area"] == 6 and by_cat[21]["area"] == 6
    assert by_cat[11]["score"] == pytest.approx(0.75, abs=1e-6)
    assert (pan.numpy()[a] == 0).all()
    assert (pan.numpy()[c] == by_cat[11]["id"]).all()
    assert (pan.numpy()[b] == by_cat[21]["id"]).all()
    assert (pan.numpy()[2:, 3:] == 0).all()


def _overlap_case(n_shared: int, n_own: int):
    """q0 (p=0.95) owns the shared pixels together with q1 (both prob 0.5 there);
    q1 (p=0.6) additionally owns ``n_own`` pixels alone. Both thing class 0."""
    w = n_shared + n_own + 1  # last column: nobody
    q0 = np.zeros((1, w), bool)
    q1 = np.zeros((1, w), bool)
    q0[0, :n_shared] = True
    q1[0, :n_shared + n_own] = True
    idle = np.zeros((1, w), bool)  # a third, never-confident query: the last pixel is 1/3 each
    logits = [cls_logits(0, 0.95), cls_logits(0, 0.6), cls_logits(1, 0.2)]
    return logits, masks_from_owner([q0, q1, idle])


def test_overlap_rejection():
    # Reorder: q0 = 0.95 * 0.5 = 0.475 ; q1 = 0.6 * (4*0.5 + 4*1)/8 = 0.45 -> q0 first.
    # q1 then has 4 of 8 pixels unassigned: 4 > 0.8*8 fails -> rejected, its pixels void.
    logits, masks = _overlap_case(4, 4)
    pan, info = run(logits, masks, thing_threshold=0.5)
    assert [s["score"] for s in info] == [pytest.approx(0.95, abs=1e-6)]
    assert pan.numpy().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0, 0]]


def test_overlap_accepted_paints_only_unassigned_pixels():
    # q0 = 0.95 * 0.5 = 0.475 ; q1 = 0.6 * (1*0.5 + 9*1)/10 = 0.57 -> q1 is ranked FIRST
    # (sort key is cls * mask score, not the class score): q1 takes all 10 pixels, q0 then
    # finds 0 of its 1 pixel free -> rejected.
    logits, masks = _overlap_case(1, 9)
    pan, info = run(logits, masks, thing_threshold=0.5)
    assert [s["score"] for s in info] == [pytest.approx(0.6, abs=1e-6)]
    assert pan.numpy().tolist() == [[1] * 10 + [0]]
    # With w_m = 0 the order is by class score alone: q0 first (1 pixel), then q1 has
    # 9 of 10 free: 9 > 8 -> kept, painting only its 9 free pixels.
    pan, info = run(logits, masks, thing_threshold=0.5, mask_weight=0.0)
    assert [(s["id"], s["area"]) for s in info] == [(1, 1), (2, 9)]
    assert pan.numpy().tolist() == [[1] + [2] * 9 + [0]]


def test_stuff_queries_of_one_class_merge():
    h, w = 2, 6
    a = region(h, w, slice(0, 2), slice(0, 2))
    b = region(h, w, slice(0, 2), slice(3, 6))
    c = region(h, w, slice(0, 2), slice(2, 3))
    logits = [cls_logits(2, 0.8), cls_logits(2, 0.9), cls_logits(1, 0.7)]
    pan, info = run(logits, masks_from_owner([a, b, c]))
    assert len(info) == 2
    merged = next(s for s in info if s["category_id"] == 22)
    assert merged["area"] == 10 and merged["isthing"] is False
    assert merged["score"] == pytest.approx(0.9, abs=1e-6)  # highest-ranked query of the class
    assert (pan.numpy()[a | b] == merged["id"]).all()


def test_two_things_of_one_class_stay_separate():
    a = region(1, 4, 0, slice(0, 2))
    b = region(1, 4, 0, slice(2, 4))
    pan, info = run([cls_logits(0, 0.9), cls_logits(0, 0.8)], masks_from_owner([a, b]))
    assert [s["category_id"] for s in info] == [11, 11]
    assert pan.numpy().tolist() == [[1, 1, 2, 2]]


def test_crop_then_resize_to_original_size():
    """Linear logits survive bilinear resizing exactly, so the class boundary is hand-computable.

    Canvas 17x17 (logits 5x5 at stride 4), image occupying the top-left 9x13, original size
    7x20. Output column j maps to valid column j*12/19, to canvas column j*12/19 and to logit
    column x = j*12/19 * 4/16 = j*3/19. q0 logit = 10(x-1.5), q1 = -q0, so p0 > 0.4 iff
    x > 1.4797 and p1 > 0.4 iff x < 1.5203: columns 0..9 (x <= 1.421) belong to q1, 10..19
    (x >= 1.579) to q0. Resizing the whole canvas instead (x = j*4/19) would put the
    boundary after column 7.
    """
    x = torch.arange(5, dtype=torch.float32).expand(5, 5)
    q0 = 10.0 * (x - 1.5)
    masks = torch.stack([q0, -q0])
    logits = [cls_logits(1, 0.9), cls_logits(2, 0.9)]
    pan, info = run(logits, masks, canvas_size=(17, 17), valid_size=(9, 13),
                    output_size=(7, 20))
    assert tuple(pan.shape) == (7, 20)
    cat = {s["id"]: s["category_id"] for s in info}
    cats = np.vectorize(lambda i: cat.get(int(i), 0))(pan.numpy())
    assert (cats[:, :10] == 22).all() and (cats[:, 10:] == 21).all()
    assert sorted(s["area"] for s in info) == [70, 70]


def test_resize_mask_logits_defaults_and_errors():
    m = torch.randn(3, 5, 5)
    assert torch.equal(resize_mask_logits(m), m)
    assert tuple(resize_mask_logits(m, canvas_size=(17, 17), valid_size=(9, 13)).shape) == (3, 9, 13)
    with pytest.raises(ValueError, match="exceeds"):
        resize_mask_logits(m, canvas_size=(17, 17), valid_size=(18, 3))
    with pytest.raises(ValueError, match=r"\[N, C\+1\]"):
        panoptic_inference(torch.zeros(3, 3), m, is_thing=IS_THING)
    with pytest.raises(ValueError, match="variant"):
        panoptic_inference(torch.zeros(3, 4), m, is_thing=IS_THING, variant="tf")


def test_threshold_is_strict_for_bytedance_and_inclusive_for_deeplab2():
    a = region(1, 3, 0, slice(0, 3))
    logits = [cls_logits(0, 0.7)]
    score = float(torch.tensor(logits).softmax(-1)[0, :-1].max())  # the exact float score
    masks = torch.cat([masks_from_owner([a]), torch.zeros(1, 1, 3)])
    logits2 = logits + [cls_logits(1, 0.1)]  # a second, never-confident query
    pan, info = run(logits2, masks, thing_threshold=score)
    assert info == [] and int(pan.abs().sum()) == 0
    pan, info = run(logits2, masks, thing_threshold=score, variant="deeplab2")
    assert [s["area"] for s in info] == [3]


def test_deeplab2_area_limits_and_label_map():
    h, w = 3, 8
    t_small = region(h, w, 0, slice(0, 3))        # thing, 3 px < 4 -> void
    t_big = region(h, w, 1, slice(0, 4))          # thing, 4 px >= 4 -> kept
    s_a = region(h, w, 2, slice(0, 2))            # stuff class 1, 2 px
    s_b = region(h, w, 2, slice(2, 5))            # stuff class 1, 3 px (class total 5 >= 5)
    s_c = region(h, w, 0, slice(4, 8))            # stuff class 2, 4 px < 5 -> void
    logits = [cls_logits(0, 0.9), cls_logits(0, 0.95), cls_logits(1, 0.8), cls_logits(1, 0.85),
              cls_logits(2, 0.99)]
    masks = masks_from_owner([t_small, t_big, s_a, s_b, s_c])
    kw = dict(is_thing=IS_THING, train_id_to_category_id=CAT_IDS, variant="deeplab2",
              thing_threshold=0.7, stuff_threshold=0.5, thing_area_limit=4, stuff_area_limit=5,
              return_label_map=True, label_divisor=1000, ignore_label=255)
    result = panoptic_inference(torch.tensor(logits), masks, **kw)
    pan, info, label = result.panoptic, result.segments_info, result.label_map
    check_areas(pan, info)
    assert sorted((s["category_id"], s["area"]) for s in info) == [(11, 4), (21, 5)]
    assert (pan.numpy()[t_small | s_c] == 0).all()
    # Mask scores are all ~1, so ranks follow class scores: s_c 0, t_big 1, t_small 2,
    # s_b 3, s_a 4. Thing instance = rank + 1; stuff instance 0; void = 255 * 1000.
    expect = np.full((h, w), 255_000)
    expect[t_big] = 11 * 1000 + 2
    expect[s_a | s_b] = 21 * 1000
    assert label.dtype == torch.int64
    assert np.array_equal(label.numpy(), expect)
    # The bytedance variant has no area limits: all five regions survive as 4 segments.
    pan, info = run(logits, masks, thing_threshold=0.7, stuff_threshold=0.5,
                    thing_area_limit=4, stuff_area_limit=5)
    assert sorted((s["category_id"], s["area"]) for s in info) == [(11, 3), (11, 4), (21, 5),
                                                                   (22, 4)]


def test_semantic_inference_weighs_class_by_mask_probability():
    # Pixel 0 owned by q0 (class 1 w.p. 0.6), pixel 1 shared 50/50 between q0 and q1 (class 2
    # w.p. 0.9): class 1 = 0.5*0.6 + 0.5*(0.1/3) = 0.317, class 2 = 0.5*(0.4/3) + 0.5*0.9 = 0.517.
    masks = torch.tensor([[[BIG, BIG]], [[0.0, BIG]]])
    logits = torch.tensor([cls_logits(1, 0.6), cls_logits(2, 0.9)])
    probs = semantic_probabilities(logits, masks)
    assert probs[:, 0, 1].tolist() == pytest.approx([0.5 * 0.4 / 3 + 0.5 * 0.1 / 3,
                                                     0.5 * 0.6 + 0.5 * 0.1 / 3,
                                                     0.5 * 0.4 / 3 + 0.5 * 0.9], abs=1e-5)
    sem = semantic_inference(logits, masks)
    assert sem.dtype == torch.int64 and sem.tolist() == [[1, 2]]


def test_sigmoid_class_and_mask_activations():
    """A sigmoid-scored family (K-Net style): [N, C] logits without void, masks scored alone.

    Both masks cover every pixel with logit 3: under the query softmax each pixel has
    probability 0.5 for both (binary at 0.4: both full, the second query then overlaps fully
    and is dropped); under sigmoids each mask alone has probability sigmoid(3) ~ 0.95.
    """
    logits = torch.tensor([[4.0, -4.0, -4.0], [-4.0, -4.0, 2.0]])  # [N=2, C=3], no void column
    masks = torch.full((2, 5, 5), 3.0)
    kw = dict(is_thing=[True, True, False], train_id_to_category_id=[1, 2, 3], thing_threshold=0.5,
              stuff_threshold=0.5, overlap_threshold=0.8, pixel_confidence_threshold=0.6)
    res = panoptic_inference(logits, masks, class_activation="sigmoid", mask_activation="sigmoid", **kw)
    assert [(s["category_id"], round(s["score"], 6)) for s in res.segments_info] == [
        (1, round(float(torch.sigmoid(torch.tensor(4.0))), 6))]
    assert res.label_map is None and int((res.panoptic == 1).sum()) == 25
    # the same masks under the query softmax are 0.5 < 0.6 everywhere: nothing survives
    void_col = torch.cat([logits, torch.full((2, 1), -9.0)], 1)
    assert panoptic_inference(void_col, masks, **kw).segments_info == []
    with pytest.raises(ValueError, match=r"\[N, C\] = \[N, 3\].*sigmoid"):
        panoptic_inference(void_col, masks, class_activation="sigmoid", **kw)
    with pytest.raises(ValueError, match="mask_activation"):
        panoptic_inference(logits, masks, class_activation="sigmoid", mask_activation="relu", **kw)
    sem = semantic_inference(logits, masks, class_activation="sigmoid", mask_activation="sigmoid")
    assert sem.shape == (5, 5) and (sem == 0).all()
