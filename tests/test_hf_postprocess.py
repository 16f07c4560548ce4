"""Hugging Face style batched post-processing and the Predictor's detectron2 output format.

Oracles: the Predictor's own merging on the same network outputs (the API must give the same
maps), and hand-built outputs whose correct result for each Hugging Face argument is worked
out in the comments.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import kmax_deeplab
from kmax_deeplab.config import apply_overrides, get_preset
from kmax_deeplab.engine.predictor import Predictor, load_image
from kmax_test_utils import randomise_batch_norms
from kmax_deeplab.modeling.hf_postprocess import (
    post_process_instance_segmentation,
    post_process_panoptic_segmentation,
    post_process_semantic_segmentation,
)

PHOTOS = sorted((Path(kmax_deeplab.__file__).parent / "assets" / "coco_sample").glob("*.jpg"))
IS_THING = [True, True, False]  # train ids 0, 1 things; 2 stuff


def outputs_from(classes, owners, ties=()):
    """One image, canvas = mask size (no resizing).

    Args:
        classes: per query ``(train_id, probability)``; the rest of the probability mass is
            spread evenly over the other classes and void (C = 3, so C+1 = 4 logits).
        owners: ``[H, W]`` int array, the query owning each pixel (-1: nobody).
        ties: ``(row_slice, col_slice, (qa, qb))``: pixels shared half/half by two queries.
    """
    n = len(classes)
    logits = torch.empty(n, 4)
    for q, (label, p) in enumerate(classes):
        probs = torch.full((4,), (1 - p) / 3)
        probs[label] = p
        logits[q] = probs.log()  # softmax(log p) = p exactly
    owners = np.asarray(owners)
    masks = torch.zeros(n, *owners.shape)
    for q in range(n):
        masks[q][torch.from_numpy(owners == q)] = 30.0  # softmax over queries ~ 1 for the owner
    for rows, cols, (qa, qb) in ties:
        masks[:, rows, cols] = 0.0
        masks[qa, rows, cols] = 30.0
        masks[qb, rows, cols] = 30.0  # 0.5 / 0.5
    return {"pred_logits": logits[None], "pred_masks": masks[None]}


def halves(h=4, w=8):
    owners = np.zeros((h, w), int)
    owners[:, w // 2:] = 1
    return owners


def run(outputs, **kw):
    kw.setdefault("is_thing", IS_THING)
    return post_process_panoptic_segmentation(outputs, **kw)[0]


def test_threshold_is_the_class_score_cut():
    out = outputs_from([(0, 0.9), (1, 0.6)], halves())
    kept = run(out, threshold=0.5)
    assert [(s["label_id"], s["score"]) for s in kept["segments_info"]] == [(0, 0.9), (1, 0.6)]
    # 0.6 < 0.7: the right half loses its query and becomes "no segment" (0)
    dropped = run(out, threshold=0.7)
    assert [s["label_id"] for s in dropped["segments_info"]] == [0]
    assert (dropped["segmentation"][:, 4:] == 0).all() and (dropped["segmentation"][:, :4] == 1).all()
    # None: the family's separate thing / stuff thresholds apply
    assert len(run(out, threshold=None, thing_threshold=0.55)["segments_info"]) == 2
    assert len(run(out, threshold=None, thing_threshold=0.65)["segments_info"]) == 1


def tie_case():
    # q0 owns columns 0-2, q1 columns 4-7, column 3 is shared 0.5/0.5.
    owners = halves()
    owners[:, 3] = -1
    return outputs_from([(0, 0.9), (1, 0.8)], owners, ties=[(slice(None), 3, (0, 1))])


def test_mask_threshold_binarises_the_mask_probabilities():
    # 0.4 < 0.5: column 3 is in both binary masks; q0 ranks first (0.9 * 14/16 > 0.8 * 18/20)
    # and takes it. 0.6 > 0.5: column 3 is in no mask and stays 0.
    low = run(tie_case(), threshold=0.5, mask_threshold=0.4, overlap_mask_area_threshold=0.5)
    assert (low["segmentation"][:, :4] == 1).all() and (low["segmentation"][:, 4:] == 2).all()
    high = run(tie_case(), threshold=0.5, mask_threshold=0.6, overlap_mask_area_threshold=0.5)
    assert (high["segmentation"][:, 3] == 0).all() and (high["segmentation"][:, :3] == 1).all()


@pytest.mark.parametrize("overlap, kept", [(0.7, True), (0.8, False), (0.9, False)])
def test_overlap_mask_area_threshold_is_the_free_fraction(overlap, kept):
    # q1's binary mask has 20 pixels (columns 3-7), 16 are still free after q0: 0.8.
    # It survives only when 0.8 > overlap (strict).
    res = run(tie_case(), threshold=0.5, mask_threshold=0.4, overlap_mask_area_threshold=overlap)
    assert [s["label_id"] for s in res["segments_info"]] == ([0, 1] if kept else [0])


def test_label_ids_to_fuse_merges_queries_of_a_class():
    stuff = outputs_from([(2, 0.9), (2, 0.8)], halves())
    fused = run(stuff, threshold=0.5)  # default: the stuff classes of is_thing
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in fused["segments_info"]] == [(1, 2, True)]
    assert (fused["segmentation"] == 1).all()
    apart = run(stuff, threshold=0.5, label_ids_to_fuse=())
    assert [(s["id"], s["was_fused"]) for s in apart["segments_info"]] == [(1, False), (2, False)]
    assert (apart["segmentation"][:, 4:] == 2).all()
    things = outputs_from([(0, 0.9), (0, 0.8)], halves())
    assert len(run(things, threshold=0.5)["segments_info"]) == 2
    one = run(things, threshold=0.5, label_ids_to_fuse=[0])
    assert [(s["label_id"], s["was_fused"], s["score"]) for s in one["segments_info"]] == [(0, True, 0.9)]
    with pytest.raises(ValueError, match="label_ids_to_fuse"):
        run(things, label_ids_to_fuse=[7])


def test_target_sizes_and_valid_sizes():
    out = outputs_from([(0, 0.9), (1, 0.8)], halves())
    big = run(out, threshold=0.5, target_sizes=[(8, 16)])
    assert tuple(big["segmentation"].shape) == (8, 16)
    assert (big["segmentation"][:, :8] == 1).all() and (big["segmentation"][:, 8:] == 2).all()
    # only the left 4 columns hold the image: the right query is cropped away
    cropped = run({**out, "valid_sizes": [(4, 4)]}, threshold=0.5, target_sizes=torch.tensor([[2, 2]]))
    assert tuple(cropped["segmentation"].shape) == (2, 2)
    assert [s["label_id"] for s in cropped["segments_info"]] == [0]
    # Hugging Face's output names are accepted
    hf = {"class_queries_logits": out["pred_logits"], "masks_queries_logits": out["pred_masks"]}
    assert torch.equal(run(hf, threshold=0.5)["segmentation"], run(out, threshold=0.5)["segmentation"])
    with pytest.raises(ValueError, match="target_sizes"):
        run(out, target_sizes=[(4, 8), (4, 8)])


def test_instance_and_semantic_of_the_hand_built_case():
    out = outputs_from([(0, 0.9), (2, 0.8)], halves())
    inst = post_process_instance_segmentation(out, threshold=0.5, is_thing=IS_THING)[0]
    assert [(s["id"], s["label_id"]) for s in inst["segments_info"]] == [(0, 0)]
    assert (inst["segmentation"][:, :4] == 0).all() and (inst["segmentation"][:, 4:] == -1).all()
    binary = post_process_instance_segmentation(out, threshold=0.5, is_thing=IS_THING,
                                                return_binary_maps=True)[0]["segmentation"]
    assert binary.dtype == torch.bool and tuple(binary.shape) == (1, 4, 8) and int(binary.sum()) == 16
    sem = post_process_semantic_segmentation(out)[0]
    assert (sem[:, :4] == 0).all() and (sem[:, 4:] == 2).all()


# ---------------------------------------------------------------- against the Predictor
@pytest.fixture(scope="module")
def predictor_and_raw():
    cfg = apply_overrides(get_preset("synthetic/kmax_tiny"), [
        "model.image_size=[65,65]", "postprocess.thing_threshold=0.0",
        "postprocess.stuff_threshold=0.0", "postprocess.overlap_threshold=0.3",
        "postprocess.pixel_confidence_threshold=0.2"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        predictor = Predictor.from_config(cfg)
    randomise_batch_norms(predictor.model, 0)  # else random masks are near uniform (no segment)
    images = [load_image(p) for p in PHOTOS]
    return predictor, images, predictor.forward_batch(images)


def segments_by_pixels(pan, info, key):
    """{frozenset of flat pixel indices: (label, score)}, id-free."""
    flat = np.asarray(pan).ravel()
    return {frozenset(np.flatnonzero(flat == s["id"]).tolist()): (s[key], round(s["score"], 5))
            for s in info}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bytedance", "deeplab2"])
def test_panoptic_api_equals_the_predictor(predictor_and_raw, variant):
    predictor, images, raw = predictor_and_raw
    predictor.cfg.postprocess.variant = variant
    sizes = [img.shape[:2] for img in images]
    expected = predictor.postprocess(raw, sizes)
    got = predictor.post_process_panoptic_segmentation(raw, target_sizes=sizes)
    to_train = {c: t for t, c in enumerate(predictor.meta.train_id_to_category_id)}
    assert len(got) == len(images) == 2
    for e, g, size in zip(expected, got, sizes):
        assert tuple(g["segmentation"].shape) == size
        assert len(e["segments_info"]) >= 2
        np.testing.assert_array_equal(g["segmentation"].numpy(), e["panoptic"])
        assert [(s["id"], s["label_id"]) for s in g["segments_info"]] == \
            [(s["id"], to_train[s["category_id"]]) for s in e["segments_info"]]
        assert all(math.isclose(a["score"], b["score"], abs_tol=1e-6)
                   for a, b in zip(g["segments_info"], e["segments_info"]))
    sem = predictor.post_process_semantic_segmentation(raw, target_sizes=sizes)
    full = predictor.postprocess(raw, sizes, semantic=True)
    for s, f in zip(sem, full):
        np.testing.assert_array_equal(s.numpy(), f["semantic"])


@pytest.mark.slow
def test_detectron2_output_format(predictor_and_raw):
    predictor, images, raw = predictor_and_raw
    predictor.cfg.postprocess.variant = "bytedance"
    sizes = [img.shape[:2] for img in images]
    coco = predictor.postprocess(raw, sizes, semantic=True)
    d2 = predictor.postprocess(raw, sizes, output_format="detectron2")
    for c, d in zip(coco, d2):
        pan, segments = d["panoptic_seg"]
        np.testing.assert_array_equal(pan.numpy(), c["panoptic"])
        to_train = {cat: t for t, cat in enumerate(predictor.meta.train_id_to_category_id)}
        assert [s["category_id"] for s in segments] == \
            [to_train[s["category_id"]] for s in c["segments_info"]]
        np.testing.assert_array_equal(d["sem_seg"].argmax(0).numpy(), c["semantic"])
        things = [s for s in segments if s["isthing"]]
        inst = d["instances"]
        assert inst["pred_masks"].shape == (len(things), *c["panoptic"].shape)
        for k, s in enumerate(things):
            assert torch.equal(inst["pred_masks"][k], pan == s["id"])
            assert int(inst["pred_classes"][k]) == s["category_id"]
    with pytest.raises(ValueError, match="output_format"):
        predictor.postprocess(raw, sizes, output_format="hf")
