"""MaX-DeepLab loss: against deeplab2's own loss code and hand-computed cases (spec §3).

Oracle 1: ``tests/data/parity/max_deeplab/deeplab2_max_loss.npz``, written by
``tools/deeplab2_max_loss.py`` from deeplab2 @64bc1c1 ``MaXDeepLabLoss`` (MaX-S COCO loss
options) on two 8x8 images (things, stuff, a crowd strip and unlabelled pixels, which
deeplab2's COCO data marks void) with three seeded predictions of 6 slots.
Oracle 2: small cases computed by hand below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _max_parity import DATA
from kmax_deeplab.data.targets import prepare_image_targets
from kmax_deeplab.losses.max_deeplab import MAX_WEIGHTS, MaXCriterion, max_instance_discrimination_loss

# deeplab2 term name -> ours
TERMS = {"pq_style_loss_class_term": "loss_cls", "pq_style_loss_mask_dice_term": "loss_dice",
         "mask_id_cross_entropy_loss": "loss_mask_id", "instance_discrimination_loss": "loss_insdis",
         "semantic_loss": "loss_sem"}


def _targets(rec):
    """deeplab2 GT (ids 1-2 things, 3-4 stuff, 0 void; thing-id map) -> our stride-1 targets (train id = id - 1)."""
    out = []
    for b in range(rec["gt_semantic"].shape[0]):
        sem = torch.from_numpy(rec["gt_semantic"][b]).long()
        tid = torch.from_numpy(rec["gt_thing_id_mask"][b]).long()
        masks, labels = [], []
        for k, cls in enumerate(rec["gt_thing_id_class"][b]):
            if cls >= 0:
                masks.append(tid == k)
                labels.append(int(cls) - 1)
        for cls in (3, 4):
            m = (sem == cls) & (tid < 0)
            if m.any():
                masks.append(m)
                labels.append(cls - 1)
        target = {"masks": torch.stack(masks), "labels": torch.tensor(labels), "is_crowd": torch.zeros(len(masks),
                  dtype=torch.bool), "void": sem == 0}
        out.append(prepare_image_targets(target, 4, stride=1, index=b))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_criterion_equals_deeplab2_max_loss(seed):
    rec = dict(np.load(DATA / "deeplab2_max_loss.npz"))
    p = f"seed{seed}/"
    sem = torch.from_numpy(rec[p + "semantic_logits"]).permute(0, 3, 1, 2)
    outputs = {
        "pred_logits": torch.from_numpy(rec[p + "class_logits"]),  # channel k = train id k, void last
        "pred_masks": torch.from_numpy(rec[p + "mask_logits"]).permute(0, 3, 1, 2),
        "pixel_feature": torch.from_numpy(rec[p + "feature"]).permute(0, 3, 1, 2),
        # TF semantic channel 0 is void (id 0): ours keeps void last
        "semantic_logits": torch.cat([sem[:, 1:], sem[:, :1]], dim=1),
    }
    ours = MaXCriterion(4, thing_classes=(0, 1))(outputs, _targets(rec))
    theirs = {TERMS[k[len(p):]]: float(v.mean()) for k, v in rec.items() if k.startswith(p) and k[len(p):] in TERMS}
    assert set(ours) == set(theirs) == set(MAX_WEIGHTS)
    for name, value in theirs.items():
        assert float(ours[name]) == pytest.approx(value, rel=1e-5, abs=1e-7), name


def test_max_instance_discrimination_by_hand():
    # 1x4 image, D = 2; pixels 0-1 thing mask A, pixel 2 stuff mask B, pixel 3 void.
    g = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]]).t().reshape(1, 2, 1, 4)
    masks = torch.tensor([[[True, True, False, False]], [[False, False, True, False]]])
    is_thing = torch.tensor([True, False])
    tau = 0.3
    t_a = torch.tensor([0.8, 0.4]) / math.hypot(0.8, 0.4)  # mean of pixels 0, 1, normalised
    t_b = torch.tensor([0.0, 1.0])
    expected = []
    for p in (0, 1):  # thing pixels only; stuff pixel 2 and void pixel 3 carry no loss
        gp = g[0, :, 0, p]
        logits = torch.stack([gp @ t_a, gp @ t_b]) / tau
        expected.append(-F.log_softmax(logits, 0)[0])
    loss = max_instance_discrimination_loss(g, [masks], [is_thing], temperature=tau)
    assert float(loss) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-6)
    # no thing pixel -> 0 (deeplab2 divide_no_nan), still differentiable
    g2 = g.clone().requires_grad_(True)
    zero = max_instance_discrimination_loss(g2, [masks], [torch.tensor([False, False])])
    assert float(zero.detach()) == 0.0
    zero.backward()


def test_criterion_by_hand_two_slots_one_segment():
    # 2 slots, one 4x4 thing segment covering the left half; right half void.
    c = 2
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True
    void = ~masks[0]
    target = {"masks": masks, "labels": torch.tensor([0]), "void": void,
              "semantic": torch.where(masks[0], 0, c)}
    mask_logits = torch.zeros(1, 2, 4, 4)
    mask_logits[0, 0, :, :2] = 2.0  # slot 0 likes the segment
    class_logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    feature = F.normalize(torch.ones(1, 3, 4, 4), dim=1)
    out = {"pred_logits": class_logits, "pred_masks": mask_logits, "pixel_feature": feature}
    weights = dict(MAX_WEIGHTS, loss_sem=0.0)
    got = MaXCriterion(c, thing_classes=(0,), weight_dict=weights)(out, [target])
    # by hand: slot 0 matched to the segment
    q = torch.softmax(mask_logits[0].flatten(1), 0)  # [2, 16]
    keep = (~void).flatten().float()
    m = masks[0].flatten().float()
    dice_sim = (q[0] * keep) @ m / (((q[0] * keep).sum() + m.sum()) / 2 + 1e-5)
    p_cls = torch.softmax(class_logits[0], -1)
    void_ratio = (q[1] * void.flatten().float()).sum() / (q[1].sum() + 1e-5)
    ce0, ce1 = -torch.log(p_cls[0, 0]), -torch.log(p_cls[1, 2])
    cls = (0.75 * dice_sim * ce0 + 0.25 * void_ratio * ce1) / 2
    assert float(got["loss_cls"]) == pytest.approx(3.0 * float(cls), rel=1e-5)
    qm = q[0] * keep  # slot softmax zeroed on void pixels
    dice_loss = 1 - (2 * (qm * m).sum() + 1) / (qm.sum() + m.sum() + 1)
    assert float(got["loss_dice"]) == pytest.approx(3.0 * 0.75 / 2 * float(p_cls[0, 0] * dice_loss), rel=1e-5)
    mask_ce = -torch.log(q[0][m.bool()]).mean()
    assert float(got["loss_mask_id"]) == pytest.approx(0.3 * float(mask_ce), rel=1e-5)
    # one mask only: instance discrimination is log(1) = 0
    assert float(got["loss_insdis"]) == pytest.approx(0.0, abs=1e-7)
    assert "loss_sem" not in got


def test_weights_are_checked():
    with pytest.raises(ValueError, match="terms without a weight"):
        MaXCriterion(4, (0,), weight_dict={"loss_cls": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        MaXCriterion(4, (0,), weight_dict=dict(MAX_WEIGHTS, loss_sem=-1.0))
    assert MAX_WEIGHTS == {"loss_cls": 3.0, "loss_dice": 3.0, "loss_mask_id": 0.3, "loss_insdis": 1.0, "loss_sem": 1.0}
