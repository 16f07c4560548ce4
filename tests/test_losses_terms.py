"""Each kMaX loss term against a hand-computed 4x4 case (spec §2), oracle in plain numpy loops.

Layout (ids; 0 = void pixel, 3 = a crowd segment, which must become void):

    1 1 2 2
    1 1 2 2
    3 3 0 2
    3 3 1 2

Segment 1 -> train id 0 (5 px), segment 2 -> train id 2 (6 px), segment 3 crowd (train id 1).
C = 3 classes, N = 3 queries, so one query stays unmatched.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from kmax_deeplab.data.targets import prepare_targets
from kmax_deeplab.losses import (
    HungarianMatcher,
    KMaXCriterion,
    build_matched_targets,
    instance_discrimination_loss,
    mask_id_cross_entropy,
    pq_class_loss,
    pq_dice_loss,
    semantic_loss,
)

C, N, D = 3, 3, 5
IDS = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 2], [3, 3, 1, 2]])
SEG_LABEL = {1: 0, 2: 2}  # non-crowd segments -> train id
VOID = (IDS == 0) | (IDS == 3)


def _raw_target():
    masks = torch.from_numpy(np.stack([IDS == 1, IDS == 2, IDS == 3]))
    return {
        "masks": masks,
        "labels": torch.tensor([0, 2, 1]),
        "is_crowd": torch.tensor([False, False, True]),
        "void": torch.from_numpy(IDS == 0),
        "semantic": torch.from_numpy(np.where(IDS == 1, 0, np.where(IDS == 2, 2, np.where(IDS == 3, 1, C)))),
    }


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    mask_logits = rng.normal(0, 2, (N, 4, 4))
    class_logits = rng.normal(0, 2, (N, C + 1))
    feat = rng.normal(0, 1, (D, 4, 4))
    feat /= np.linalg.norm(feat, axis=0, keepdims=True)
    sem_logits = rng.normal(0, 1, (C + 1, 4, 4))
    outputs = {
        "pred_logits": torch.tensor(class_logits[None], dtype=torch.float32),
        "pred_masks": torch.tensor(mask_logits[None], dtype=torch.float32),
        "pixel_feature": torch.tensor(feat[None], dtype=torch.float32),
        "semantic_logits": torch.tensor(sem_logits[None], dtype=torch.float32),
    }
    targets = prepare_targets([_raw_target()], C, stride=1)
    return mask_logits, class_logits, feat, sem_logits, outputs, targets


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _oracle(mask_logits, class_logits, feat, sem_logits):
    """Every term by hand: matching by brute force, then per-query / per-pixel loops."""
    segs = [1, 2]
    gt = {s: (IDS == s).astype(float) for s in segs}
    p = _softmax(mask_logits, 0)  # [N, 4, 4]
    p_masked = p * (~VOID)
    cls_prob = _softmax(class_logits, 1)
    dice = np.zeros((N, 2))
    sim = np.zeros((N, 2))
    for i in range(N):
        for j, s in enumerate(segs):
            inter = (p_masked[i] * gt[s]).sum()
            dice[i, j] = inter / ((p_masked[i].sum() + gt[s].sum()) / 2 + 1e-5)
            sim[i, j] = cls_prob[i, SEG_LABEL[s]]
    best, match = -1.0, None
    for perm in itertools.permutations(range(N), 2):  # perm[j] = query of segment j
        score = sum(dice[perm[j], j] * sim[perm[j], j] for j in range(2))
        if score > best:
            best, match = score, perm
    query_of = {s: match[j] for j, s in enumerate(segs)}
    seg_of = {q: s for s, q in query_of.items()}

    # L_cls
    terms = []
    for i in range(N):
        log_sm = np.log(_softmax(class_logits[i], 0))
        if i in seg_of:
            j = segs.index(seg_of[i])
            t, a, w = SEG_LABEL[seg_of[i]], 0.75, max(dice[i, j], 1e-5)
        else:
            ratio = (p[i] * VOID).sum() / (p[i].sum() + 1e-5)
            t, a, w = C, 0.25, max(ratio, 1e-5)
        terms.append(-log_sm[t] * a * w)
    l_cls = sum(terms) / sum(1 for x in terms if x != 0)

    # L_dice
    l_dice = 0.0
    for s, i in query_of.items():
        j = segs.index(s)
        num = 2 * (p_masked[i] * gt[s]).sum() + 1
        den = p_masked[i].sum() + gt[s].sum() + 1
        l_dice += (1 - num / den) * max(sim[i, j], 1e-5)
    l_dice *= 0.75 / N

    # L_maskCE and L_sem (all pixels)
    ce, sem = [], []
    for y in range(4):
        for x in range(4):
            if VOID[y, x]:
                continue
            s = IDS[y, x]
            ce.append(-math.log(p[query_of[s], y, x]))
            sem.append(-math.log(_softmax(sem_logits[:, y, x], 0)[SEG_LABEL[s]]))
    l_mask = float(np.mean(ce))
    l_sem = float(np.mean(sem))

    # L_insdis with every pixel sampled: softmax over all 16 pixels (void ones included in the
    # normaliser), target uniform over the pixels of the same segment; averaged over non-void.
    pix = [(y, x) for y in range(4) for x in range(4)]
    ins = []
    for (yj, xj) in pix:
        if VOID[yj, xj]:
            continue
        logits = np.array([feat[:, yk, xk] @ feat[:, yj, xj] / 0.3 for (yk, xk) in pix])
        log_sm = np.log(_softmax(logits, 0))
        same = [k for k, (yk, xk) in enumerate(pix) if IDS[yk, xk] == IDS[yj, xj]]
        ins.append(-sum(log_sm[k] for k in same) / len(same))
    l_ins = float(np.mean(ins))
    return dict(loss_cls=l_cls, loss_dice=l_dice, loss_mask_id=l_mask, loss_insdis=l_ins, loss_sem=l_sem,
                query_of=query_of, dice=dice, sim=sim)


def _matched(case):
    *_, outputs, targets = case
    matches = HungarianMatcher()(outputs, targets)
    return matches, build_matched_targets(outputs, targets, matches, C)


def test_prepared_case_marks_crowd_and_void(case):
    *_, targets = case
    t = targets[0]
    assert t["masks"].shape == (2, 4, 4)
    assert t["labels"].tolist() == [0, 2]
    assert np.array_equal(t["void"].numpy(), VOID)
    assert np.array_equal(t["semantic"].numpy(), np.where(IDS == 1, 0, np.where(IDS == 2, 2, C)))
    assert np.array_equal(t["pixel_area"].numpy(), np.where(IDS == 1, 5.0, np.where(IDS == 2, 6.0, 0.0)))


def test_matching_and_weights(case):
    mask_logits, class_logits, feat, sem_logits, *_ = case
    ref = _oracle(mask_logits, class_logits, feat, sem_logits)
    matches, mt = _matched(case)
    m = matches[0]
    got = {int(g) + 1: int(q) for q, g in zip(m.pred_idx, m.gt_idx)}
    assert got == ref["query_of"]
    for q, g in zip(m.pred_idx.tolist(), m.gt_idx.tolist()):
        assert m.dice[m.pred_idx.tolist().index(q)].item() == pytest.approx(ref["dice"][q, g], rel=1e-5)
        assert mt.dice_weight[0, q].item() == pytest.approx(ref["sim"][q, g], rel=1e-5)
        assert mt.classes[0, q].item() == SEG_LABEL[g + 1]
    unmatched = ({0, 1, 2} - set(got.values())).pop()
    assert mt.classes[0, unmatched].item() == C
    assert mt.dice_weight[0, unmatched].item() == 0.0
    assert np.array_equal(mt.void[0].numpy(), VOID)


def test_pq_class_term(case):
    ref = _oracle(*case[:4])
    _, mt = _matched(case)
    got = pq_class_loss(case[4]["pred_logits"], mt.classes, mt.class_weight)
    assert got.item() == pytest.approx(ref["loss_cls"], rel=1e-5)


def test_pq_dice_term(case):
    ref = _oracle(*case[:4])
    _, mt = _matched(case)
    got = pq_dice_loss(case[4]["pred_masks"], mt.masks, mt.void, mt.dice_weight)
    assert got.item() == pytest.approx(ref["loss_dice"], rel=1e-5)


def test_mask_id_term(case):
    ref = _oracle(*case[:4])
    _, mt = _matched(case)
    got = mask_id_cross_entropy(case[4]["pred_masks"], mt.masks, mt.void)
    assert got.item() == pytest.approx(ref["loss_mask_id"], rel=1e-5)


@pytest.mark.parametrize("k", [16, 10_000])
def test_instance_discrimination_term(case, k):
    ref = _oracle(*case[:4])
    _, mt = _matched(case)
    got = instance_discrimination_loss(case[4]["pixel_feature"], mt.masks, mt.void, mt.inverse_area,
                                       sample_k=k, sample_temperature=1.5)
    assert got.item() == pytest.approx(ref["loss_insdis"], rel=1e-5)


@pytest.mark.parametrize("k", [0, 16])
def test_semantic_term(case, k):
    ref = _oracle(*case[:4])
    _, mt = _matched(case)
    got = semantic_loss(case[4]["semantic_logits"], mt.semantic, mt.void, mt.inverse_area,
                        num_classes=C, sample_k=k, sample_temperature=2.0)
    assert got.item() == pytest.approx(ref["loss_sem"], rel=1e-5)


def test_criterion_total_equals_weighted_hand_terms(case):
    ref = _oracle(*case[:4])
    *_, outputs, targets = case
    weights = {"loss_cls": 3.0, "loss_dice": 3.0, "loss_mask_id": 0.3, "loss_insdis": 1.0, "loss_sem": 1.0}
    crit = KMaXCriterion(C, HungarianMatcher(), weights, insdis_sample_k=16, semantic_sample_k=0)
    aux = {k: outputs[k].clone() for k in ("pred_logits", "pred_masks", "pixel_feature")}
    losses = crit(dict(outputs, aux_outputs=[aux]), targets)
    assert sorted(losses) == sorted(list(weights) + [f"{k}_aux0" for k in weights if k != "loss_sem"])
    for name, w in weights.items():
        assert losses[name].item() == pytest.approx(w * ref[name], rel=1e-5)
        if name != "loss_sem":
            assert losses[f"{name}_aux0"].item() == pytest.approx(w * ref[name], rel=1e-5)
