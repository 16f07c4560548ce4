"""K-Net losses and assignment: hand-computed cases, and the original code's loss values on a
real photo with its COCO panoptic ground truth (fixtures of ``tools/knet_parity.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kmax_deeplab.losses.knet import (
    KNetCriterion,
    build_knet_targets,
    dice_loss,
    knet_match,
    rank_loss,
    sigmoid_focal_loss,
)

from knet_test_utils import PARITY_DIR, seeded_knet


def test_sigmoid_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    labels = torch.tensor([1, 2])  # second row: background (C = 2)
    weight = torch.tensor([[1.0, 1.0], [0.0, 1.0]])

    def term(x, t):
        p = 1 / (1 + math.exp(-x))
        bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        pt = (1 - p) * t + p * (1 - t)
        return bce * (0.25 * t + 0.75 * (1 - t)) * pt ** 2

    expected = (term(0.0, 0) + term(2.0, 1) + 0 * term(-1.0, 0) + term(0.5, 0)) / 2.0
    got = sigmoid_focal_loss(logits, labels, weight=weight, avg_factor=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dice_and_rank_by_hand():
    logits = torch.tensor([[[0.0, 10.0], [-10.0, 0.0]]])  # p ≈ [.5, 1, 0, .5]
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.5]]])
    p = torch.sigmoid(logits).flatten()
    t = target.flatten()
    expected = 1 - 2 * (p * t).sum() / ((p * p).sum() + 1e-3 + (t * t).sum() + 1e-3)
    assert dice_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # rank: mean over ALL pixels, ignored (255) ones count as 0
    masks = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # [B=1, N=2, 1, 2]
    target = torch.tensor([[[0, 255]]])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert rank_loss(masks, target).item() == pytest.approx(ce0 / 2, rel=1e-6)


def test_match_cost_by_hand():
    """2 predictions x 2 targets; the cost picks the swap that the numbers make optimal."""
    big = 8.0
    pred = torch.tensor([[[-big, big]], [[big, -big]]])  # kernel 0 covers pixel 1, kernel 1 pixel 0
    gt = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    rows, cols = knet_match(pred, gt)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    # the class cost can overrule a weak mask preference
    weak = torch.tensor([[[-0.1, 0.1]], [[0.1, -0.1]]])
    cls = torch.tensor([[6.0, -6.0], [-6.0, 6.0]])  # kernel 0 says class 0, kernel 1 class 1
    rows, cols = knet_match(weak, gt, cls_logits=cls, gt_labels=torch.tensor([0, 1]))
    assert cols.tolist() == [0, 1]
    empty = knet_match(pred, gt[:0])
    assert empty[0].numel() == 0


def test_targets_soft_bilinear_crowd_dropped_stuff_merged():
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[0, :2, :2] = True  # thing, class 3 (its edge falls between bilinear samples: soft)
    masks[1, 4:, 4:] = True  # crowd thing: dropped
    masks[2, :, 6:] = True  # stuff class 90
    masks[3, 6:, :2] = True  # stuff class 90 again: merged into one mask
    t = {"masks": masks, "labels": torch.tensor([3, 5, 90, 90]), "is_crowd": torch.tensor([False, True, False, False])}
    out = build_knet_targets([t], (16, 16), num_thing_classes=80, with_stuff=True)[0]
    assert out.thing_labels.tolist() == [3] and out.stuff_labels.tolist() == [90]
    assert out.thing_masks.shape == (1, 4, 4)
    padded = torch.zeros(16, 16)
    padded[:2, :2] = 1
    expect = torch.nn.functional.interpolate(padded[None, None], (4, 4), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(out.thing_masks[0], expect)
    assert out.thing_masks[0, 0, 0].item() == pytest.approx(0.25)  # soft, not binary
    union = (masks[2] | masks[3]).float()
    expect = torch.nn.functional.interpolate(torch.nn.functional.pad(union, (0, 8, 0, 8))[None, None], (4, 4),
                                             mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(out.stuff_masks[0], expect)
    inst = build_knet_targets([t], (16, 16), num_thing_classes=80, with_stuff=False)[0]
    assert inst.stuff_masks.shape[0] == 0


def _reference_targets(gold):
    masks = [torch.from_numpy(gold["gt_masks"]).bool()]
    labels = [torch.from_numpy(gold["gt_labels"])]
    sem = torch.from_numpy(gold["gt_semantic_seg"].astype(np.int64))
    for c in sorted(set(sem.unique().tolist()) - {255}):
        if c >= 80:  # thing (and crowd) pixels carry thing ids < 80: not stuff
            masks.append((sem == c)[None])
            labels.append(torch.tensor([c]))
    labels = torch.cat(labels)
    return {"masks": torch.cat(masks), "labels": labels, "is_crowd": torch.zeros(len(labels), dtype=torch.bool)}


class _ReplayCriterion(KNetCriterion):
    """Uses the original code's assignments (recorded per call: head, s0, s1, s2) and checks
    that ours is optimal too: equal cost, up to near-ties of the seeded network's similar kernels."""

    def __init__(self, recorded, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded = list(recorded)
        self.cost_gaps = []

    def _assign(self, masks, cls, tgt):
        ours = super()._assign(masks, cls, tgt)
        gt_inds = torch.as_tensor(self.recorded.pop(0)).long()
        rows = torch.nonzero(gt_inds > 0).flatten()
        ref = (rows, gt_inds[rows] - 1)
        cost = _cost(masks[0, :self.num_kernels], cls, tgt[0], self)
        self.cost_gaps.append(abs(float(cost[ours[0][0], ours[0][1]].sum() - cost[ref[0], ref[1]].sum())))
        return [ref]


def _cost(masks, cls, tg, crit):
    """The full cost matrix (same formula as knet_match), for comparing two assignments."""
    p, t = masks.float().sigmoid().detach(), tg.thing_masks
    hw = p.shape[-2] * p.shape[-1]
    cost = -(torch.einsum("nhw,mhw->nm", p, t) + torch.einsum("nhw,mhw->nm", 1 - p, 1 - t)) / hw
    pf, tf = p.flatten(1), t.flatten(1)
    cost = cost - 4 * 2 * (pf @ tf.t()) / ((pf * pf).sum(1) + 1e-3)[:, None].add((tf * tf).sum(1)[None] + 1e-3)
    if cls is not None:
        s = cls[0, :crit.num_kernels, :crit.num_thing_classes].detach().sigmoid()
        neg = -(1 - s + 1e-12).log() * 0.75 * s ** 2
        pos = -(s + 1e-12).log() * 0.25 * (1 - s) ** 2
        cost = cost + 2 * (pos - neg)[:, tg.thing_labels]
    return cost


@pytest.mark.slow
@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_losses_match_original_on_real_image(task):
    gold = dict(np.load(PARITY_DIR / f"{task}.npz"))
    model = seeded_knet(task).train()
    out = model(torch.from_numpy(gold["image"]).permute(2, 0, 1)[None].float())
    panoptic = task == "panoptic"
    crit = _ReplayCriterion(gold["assigned_gt_inds"], 133 if panoptic else 80, with_stuff=panoptic,
                            rank_weight=0.1 if panoptic else None)
    losses = crit(out, [_reference_targets(gold)])
    ref = {k: v for k, v in zip(gold["loss_names"].tolist(), gold["loss_values"].tolist()) if "acc" not in k}
    assert sorted(losses) == sorted(ref)
    for k, v in ref.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # our own Hungarian solution is as good as the original's (ties only)
    assert max(crit.cost_gaps) < 1e-3, crit.cost_gaps
    total = sum(losses.values())
    total.backward()
    assert model.kernel_head.init_kernels.weight.grad is not None


def test_stuff_kernels_fixed_and_label_weights():
    """Thing kernels get no weight on stuff columns; stuff kernel j only on its own column."""
    crit = KNetCriterion(5, num_thing_classes=3, num_kernels=2, with_stuff=True, rank_weight=0.1)
    h = w = 4
    gt = {"masks": torch.zeros(2, 16, 16, dtype=torch.bool), "labels": torch.tensor([1, 4]),
          "is_crowd": torch.tensor([False, False])}
    gt["masks"][0, :8, :8] = True
    gt["masks"][1, 8:] = True
    cls = torch.zeros(1, 4, 5, requires_grad=True)
    masks = torch.zeros(1, 4, h, w)
    tg = build_knet_targets([gt], (16, 16), num_thing_classes=3, with_stuff=True)
    terms = crit._stage_terms(0, {"pred_logits": cls, "pred_masks": masks}, masks, None, tg)
    terms["s0_loss_cls"].backward()
    g = cls.grad[0]
    assert (g[:2, 3:] == 0).all() and (g[:2, :3] != 0).all()  # thing kernels: thing columns only
    assert (g[2, [0, 1, 2, 4]] == 0).all() and g[2, 3] != 0  # stuff kernel 0 = class 3, absent: negative
    assert (g[3, :4] == 0).all() and g[3, 4] < 0  # stuff kernel 1 = class 4, present: positive
