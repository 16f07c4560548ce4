"""HungarianMatcher against brute-force search over all assignments (spec §2)."""

import itertools

import numpy as np
import pytest
import torch

from kmax_deeplab.losses import HungarianMatcher


def _similarity(mask_logits, class_logits, gt, labels, void):
    """D·S with numpy, independently of the implementation."""
    e = np.exp(mask_logits - mask_logits.max(0, keepdims=True))
    p = (e / e.sum(0, keepdims=True)) * (~void)
    ec = np.exp(class_logits - class_logits.max(1, keepdims=True))
    cp = ec / ec.sum(1, keepdims=True)
    n, m = p.shape[0], gt.shape[0]
    out = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            d = (p[i] * gt[j]).sum() / ((p[i].sum() + gt[j].sum()) / 2 + 1e-5)
            out[i, j] = d * cp[i, labels[j]]
    return out


def _brute_force(sim):
    """Best total similarity over all one-to-one assignments of min(N, M) pairs."""
    n, m = sim.shape
    if n >= m:
        return max(sum(sim[q[j], j] for j in range(m)) for q in itertools.permutations(range(n), m))
    return max(sum(sim[i, g[i]] for i in range(n)) for g in itertools.permutations(range(m), n))


@pytest.mark.parametrize("seed", range(12))
def test_matching_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m, c, hw = int(rng.integers(1, 6)), int(rng.integers(1, 5)), 4, 6
    seg = rng.integers(0, m + 1, (hw, hw))  # 0 = void
    seg[0, : m + 1] = np.arange(m + 1)  # every segment present
    gt = np.stack([seg == j + 1 for j in range(m)])
    void = seg == 0
    labels = rng.integers(0, c, m)
    mask_logits = rng.normal(0, 2, (n, hw, hw))
    class_logits = rng.normal(0, 2, (n, c + 1))
    outputs = {"pred_logits": torch.tensor(class_logits[None], dtype=torch.float32),
               "pred_masks": torch.tensor(mask_logits[None], dtype=torch.float32)}
    targets = [{"masks": torch.from_numpy(gt), "labels": torch.from_numpy(labels), "void": torch.from_numpy(void)}]
    (match,) = HungarianMatcher()(outputs, targets)
    sim = _similarity(mask_logits, class_logits, gt, labels, void)

    k = min(n, m)
    assert match.pred_idx.dtype == torch.int64 and match.gt_idx.dtype == torch.int64
    assert len(match.pred_idx) == k and len(set(match.pred_idx.tolist())) == k
    assert len(set(match.gt_idx.tolist())) == k
    total = sum(sim[i, j] for i, j in zip(match.pred_idx.tolist(), match.gt_idx.tolist()))
    assert total == pytest.approx(_brute_force(sim), rel=1e-5, abs=1e-7)
    prod = (match.dice * match.class_prob).numpy()
    assert np.allclose(prod, sim[match.pred_idx.numpy(), match.gt_idx.numpy()], rtol=1e-5, atol=1e-7)


def test_more_segments_than_queries_keeps_best_n():
    # 2 queries, 3 segments: query 0 predicts segment 2 and query 1 segment 0; segment 1 is left out.
    seg = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]])
    gt = np.stack([seg == j for j in (1, 2, 3)])
    mask_logits = np.stack([np.where(seg == 3, 5.0, -5.0), np.where(seg == 1, 5.0, -5.0)])
    class_logits = np.array([[0.0, 0.0, 5.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    outputs = {"pred_logits": torch.tensor(class_logits[None], dtype=torch.float32),
               "pred_masks": torch.tensor(mask_logits[None], dtype=torch.float32)}
    targets = [{"masks": torch.from_numpy(gt), "labels": torch.tensor([0, 1, 2]),
                "void": torch.zeros(4, 4, dtype=torch.bool)}]
    (match,) = HungarianMatcher()(outputs, targets)
    assert dict(zip(match.pred_idx.tolist(), match.gt_idx.tolist())) == {0: 2, 1: 0}


def test_no_segments_and_nan_logits():
    outputs = {"pred_logits": torch.full((2, 3, 4), float("nan")), "pred_masks": torch.zeros(2, 3, 4, 4)}
    targets = [
        {"masks": torch.zeros(0, 4, 4, dtype=torch.bool), "labels": torch.zeros(0, dtype=torch.int64),
         "void": torch.ones(4, 4, dtype=torch.bool)},
        {"masks": torch.ones(1, 4, 4, dtype=torch.bool), "labels": torch.tensor([1]),
         "void": torch.zeros(4, 4, dtype=torch.bool)},
    ]
    empty, nan_case = HungarianMatcher()(outputs, targets)
    assert empty.pred_idx.numel() == 0 and empty.gt_idx.numel() == 0
    assert nan_case.gt_idx.tolist() == [0] and nan_case.pred_idx.numel() == 1


def test_size_mismatch_raises():
    outputs = {"pred_logits": torch.zeros(1, 3, 4), "pred_masks": torch.zeros(1, 3, 5, 5)}
    targets = [{"masks": torch.ones(1, 4, 4, dtype=torch.bool), "labels": torch.tensor([1]),
                "void": torch.zeros(4, 4, dtype=torch.bool)}]
    with pytest.raises(ValueError, match="prepare_targets"):
        HungarianMatcher()(outputs, targets)
