"""MaX-DeepLab loss on one real COCO ground truth against deeplab2's own code (spec ``max_deeplab.md`` §10.9).

Oracle: ``tests/data/parity/max_deeplab/deeplab2_max_loss_real.npz``, written by
``tools/deeplab2_max_loss_real.py`` (deeplab2 @64bc1c1, TF 2.21 CPU): deeplab2's COCO label
conversion (``build_coco_data``, crowd as ignore) and ``PanopticSampleGenerator`` (thing-ID
masks, semantic loss weights, with and without MaX-L's small-instance weight 3 / 4096 px)
on a 129x129 window of COCO val image 439180 (9 people and horses, crowd regions, stuff),
then ``MaXDeepLabLoss`` on seeded 128-slot outputs (``tests/_max_real_loss.py``, regenerated
here without TF). Our pipeline (dataset -> crop -> ``build_sample`` -> ``prepare_image_targets``)
must give deeplab2's ground truth, and ``MaXCriterion`` its loss terms (<= 1e-5 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _max_real_loss import CASES, FIXTURE, IMAGE_ID, SAMPLE, SMALL_INSTANCE_THRESHOLD, WINDOW, seeded_outputs
from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
from kmax_deeplab.data.record import build_sample
from kmax_deeplab.data.targets import prepare_image_targets
from kmax_deeplab.data.transforms import crop
from kmax_deeplab.losses.max_deeplab import MaXCriterion

TERMS = {"pq_style_loss_class_term": "loss_cls", "pq_style_loss_mask_dice_term": "loss_dice",
         "mask_id_cross_entropy_loss": "loss_mask_id", "instance_discrimination_loss": "loss_insdis",
         "semantic_loss": "loss_sem"}
META = get_dataset_meta("coco")
THINGS = sorted(META.thing_train_ids)


@pytest.fixture(scope="module")
def record():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def sample():
    ds = COCOPanopticDataset(SAMPLE / "input_images", SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples",
                             META)
    index = next(i for i, r in enumerate(ds.records) if r["image_id"] == IMAGE_ID)
    return build_sample(crop(ds.load_record(index), *WINDOW), META)


def _targets(sample, weight: float, stride: int):
    return prepare_image_targets(sample, META.num_classes, stride=stride,
                                 small_instance_threshold=SMALL_INSTANCE_THRESHOLD, small_instance_weight=weight,
                                 thing_classes=THINGS)


@pytest.mark.parametrize("case,weight", CASES)
def test_ground_truth_equals_deeplab2_sample(record, sample, case, weight):
    assert tuple(record["window"]) == WINDOW
    full = _targets(sample, weight, stride=1)
    sem = full["semantic"].numpy()
    # deeplab2 ids: train id + 1, 0 = ignore (crowd, unlabelled)
    np.testing.assert_array_equal(np.where(sem == META.num_classes, 0, sem + 1), record[f"{case}/gt_semantic"])
    tid, tcls = record[f"{case}/gt_thing_id_mask"], record[f"{case}/gt_thing_id_class"]
    theirs = {(int(tcls[k]) - 1, np.flatnonzero(tid == k).tobytes()) for k in range(int((tcls >= 0).sum()))}
    ours = {(int(lab), np.flatnonzero(m.numpy()).tobytes()) for m, lab in zip(full["masks"], full["labels"])
            if int(lab) in META.thing_train_ids}
    assert len(theirs) == 9 and ours == theirs
    expected = record[f"{case}/semantic_weights"]
    got = full.get("semantic_weight", torch.ones(sem.shape)).numpy()
    np.testing.assert_array_equal(got, expected)
    assert (weight == 1.0) == ("semantic_weight" not in full)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case,weight", CASES)
def test_criterion_equals_deeplab2_loss_on_real_gt(record, sample, case, weight, seed):
    out = {k: torch.from_numpy(v) for k, v in seeded_outputs(seed).items()}
    sem = out["semantic_logits"].permute(0, 3, 1, 2)
    outputs = {"pred_logits": out["class_logits"],  # deeplab2 class head: train ids, void last
               "pred_masks": out["mask_logits"].permute(0, 3, 1, 2),
               "pixel_feature": out["feature"].permute(0, 3, 1, 2),
               "semantic_logits": torch.cat([sem[:, 1:], sem[:, :1]], dim=1)}  # semantic channel 0 = void
    ours = MaXCriterion(META.num_classes, thing_classes=THINGS)(outputs, [_targets(sample, weight, stride=4)])
    p = f"{case}/seed{seed}/"
    theirs = {TERMS[k[len(p):]]: float(v.mean()) for k, v in record.items() if k.startswith(p)}
    assert set(ours) == set(theirs) == set(TERMS.values())
    for name, value in theirs.items():
        assert float(ours[name]) == pytest.approx(value, rel=1e-5), name
