"""prepare_targets: strided subsampling to stride 4, crowd/void handling (spec §2)."""

import numpy as np
import pytest
import torch

from kmax_deeplab.data.targets import prepare_targets


def _target(ids, segments, void_ids=(0,)):
    """ids: [H, W] int map; segments: list of (id, label, is_crowd)."""
    ids = torch.as_tensor(ids)
    return {
        "masks": torch.stack([ids == s for s, _, _ in segments]),
        "labels": torch.tensor([lab for _, lab, _ in segments]),
        "is_crowd": torch.tensor([c for _, _, c in segments]),
        "void": torch.isin(ids, torch.tensor(void_ids)),
        "semantic": torch.zeros_like(ids),
    }


def test_strided_subsampling_size_and_values():
    rng = np.random.default_rng(0)
    h, w = 33, 65  # 32k+1 -> (H-1)/4+1 = 9, 17
    ids = rng.integers(0, 4, (h, w))
    ids[::4, ::4][0, :4] = [0, 1, 2, 3]
    t = _target(ids, [(1, 4, False), (2, 5, False), (3, 6, True)])
    (out,) = prepare_targets([t], num_classes=7)
    sub = ids[::4, ::4]
    assert out["masks"].shape == (2, 9, 17)
    assert np.array_equal(out["masks"][0].numpy(), sub == 1)
    assert np.array_equal(out["masks"][1].numpy(), sub == 2)
    assert out["labels"].tolist() == [4, 5]
    assert np.array_equal(out["void"].numpy(), (sub == 0) | (sub == 3))  # crowd is void
    expected_sem = np.where(sub == 1, 4, np.where(sub == 2, 5, 7))  # crowd -> ignore (BD)
    assert np.array_equal(out["semantic"].numpy(), expected_sem)
    expected_area = np.where(sub == 1, (sub == 1).sum(), np.where(sub == 2, (sub == 2).sum(), 0))
    assert np.array_equal(out["pixel_area"].numpy(), expected_area.astype(np.float32))


def test_segment_vanishing_after_subsampling_is_dropped():
    ids = np.ones((9, 9), dtype=np.int64)
    ids[1:4, 1:4] = 2  # never hit by [::4, ::4]
    ids[:, 8] = 0
    t = _target(ids, [(1, 0, False), (2, 3, False)])
    (out,) = prepare_targets([t], num_classes=4)
    assert out["labels"].tolist() == [0]
    assert out["masks"].shape == (1, 3, 3)
    assert out["void"][:, 2].all() and not out["void"][:, :2].any()


def test_mask_over_void_pixel_is_void():
    ids = np.ones((5, 5), dtype=np.int64)
    t = _target(ids, [(1, 0, False)])
    t["void"][0, 0] = True  # padding flagged by the dataset wins
    (out,) = prepare_targets([t], num_classes=2, stride=4)
    assert out["void"].tolist() == [[True, False], [False, False]]
    assert out["masks"][0].tolist() == [[False, True], [True, True]]
    assert out["semantic"].tolist() == [[2, 0], [0, 0]]


def test_bad_input_raises():
    t = _target(np.ones((5, 5), dtype=np.int64), [(1, 9, False)])
    with pytest.raises(ValueError, match=r"target 0: labels must lie in \[0, 3\)"):
        prepare_targets([t], num_classes=3)
    t = _target(np.ones((5, 5), dtype=np.int64), [(1, 0, False)])
    t["void"] = t["void"][:4]
    with pytest.raises(ValueError, match="void shape"):
        prepare_targets([t], num_classes=3)
    t = _target(np.ones((5, 5), dtype=np.int64), [(1, 0, False)])
    del t["is_crowd"]
    with pytest.raises(ValueError, match="missing key 'is_crowd'"):
        prepare_targets([t], num_classes=3)
