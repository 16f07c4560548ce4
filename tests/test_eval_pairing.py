"""pair_segments' run-based counting against a per-pixel brute-force count, for
every id representation (24-bit table path, wide and signed ids via searchsorted)."""

from __future__ import annotations

import numpy as np
import pytest

from kmax_deeplab.evaluation import PanopticEvaluationError
from kmax_deeplab.evaluation.pairing import pair_segments


def brute_force_counts(gt, gt_info, pred, pred_info):
    """Oracle: count every pixel into [len(gt)+2, len(pred)+2] by explicit lookups."""
    def row_of(v, info):
        for i, s in enumerate(info):
            if s["id"] == v:
                return i + 1
        return len(info) + 1 if v == 0 else 0

    counts = np.zeros((len(gt_info) + 2, len(pred_info) + 2), np.int64)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
        counts[row_of(g, gt_info), row_of(p, pred_info)] += 1
    return counts


def random_case(rng, ids, h=23, w=31):
    """Blocky maps (runs) plus scattered pixels; ids drawn from ``ids``."""
    gt = rng.choice(ids, (h // 4 + 1, w // 4 + 1))
    gt = np.repeat(np.repeat(gt, 4, 0), 4, 1)[:h, :w].copy()
    pred = np.roll(gt, 3, axis=1)
    pred[rng.random((h, w)) < 0.1] = rng.choice(ids)
    gt_info = [{"id": int(i), "category_id": 1} for i in np.unique(gt) if i != 0]
    pred_info = [{"id": int(i), "category_id": 1} for i in np.unique(pred)]  # lists id 0 too
    rng.shuffle(gt_info)
    return gt, gt_info, pred, pred_info


@pytest.mark.parametrize("dtype,ids", [
    (np.uint32, [0, 1, 5, 70000, (1 << 24) - 1]),              # table path
    (np.uint32, [0, 3, 1 << 24, (1 << 32) - 1]),                # ids above 24 bits
    (np.int64, [0, 7, -5, 1 << 40]),                            # signed, negative ids
    (np.uint64, [0, 2, (1 << 64) - 1, (1 << 63) + 5]),          # beyond int64
    (np.uint8, [0, 1, 200]),
])
def test_counts_match_brute_force(dtype, ids):
    rng = np.random.default_rng(len(ids) + np.dtype(dtype).itemsize)
    for _ in range(5):
        gt, gi, pred, pi = random_case(rng, np.array(ids, dtype=dtype))
        pairing = pair_segments(gt, gi, pred, pi, keep_maps=True)
        expected = brute_force_counts(gt, gi, pred, pi)
        np.testing.assert_array_equal(pairing.counts, expected)
        # The per-pixel index maps (for AP) agree with the counts.
        flat = pairing.gt_index.astype(np.int64) * expected.shape[1] + pairing.pred_index
        np.testing.assert_array_equal(np.bincount(flat.ravel(), minlength=expected.size)
                                      .reshape(expected.shape), expected)


def test_same_counts_for_every_dtype():
    rng = np.random.default_rng(0)
    gt, gi, pred, pi = random_case(rng, np.array([0, 4, 9, 250], np.uint32))
    ref = pair_segments(gt, gi, pred, pi).counts
    for dtype in (np.uint8, np.int16, np.int64, np.uint64):
        np.testing.assert_array_equal(pair_segments(gt.astype(dtype), gi, pred.astype(dtype), pi).counts, ref)


def test_float_maps_are_rejected():
    gt = np.ones((2, 2), np.float32)
    with pytest.raises(PanopticEvaluationError, match=r"ground-truth map has dtype float32"):
        pair_segments(gt, [{"id": 1, "category_id": 1}], gt.astype(np.int32), [{"id": 1, "category_id": 1}],
                      image_id=3)


def test_non_integer_segment_id_is_rejected():
    gt = np.ones((2, 2), np.uint32)
    with pytest.raises(PanopticEvaluationError, match=r"segment id 'a' is not an integer"):
        pair_segments(gt, [{"id": 1, "category_id": 1}], gt, [{"id": "a", "category_id": 1}], image_id=3)
