"""K-Net inference rules on hand-built cases (knet.md §7): thing scores over thing classes only,
stuff scores on the diagonal, argmax(score·mask) ownership, score 0.3 and overlap 0.6."""

from __future__ import annotations

import pytest
import torch

from kmax_deeplab.modeling.knet.postprocess import knet_instance_inference, knet_panoptic_inference

BIG = 20.0


def _case():
    """2 thing kernels + 2 stuff kernels (T = 2 thing classes, C = 4) on a 4x8 map (no resizing)."""
    logits = torch.full((4, 4), -BIG)
    logits[0, 1] = 2.0  # thing kernel 0: class 1, score σ(2) = 0.88
    logits[0, 3] = 5.0  # ... a high *stuff* column must not count for a thing kernel
    logits[1, 0] = -0.5  # thing kernel 1: class 0, score σ(-0.5) = 0.38
    logits[2, 2] = 1.0  # stuff kernel 0 = class 2 (its own column)
    logits[2, 0] = 9.0  # ... off-diagonal columns are ignored for stuff
    logits[3, 3] = -3.0  # stuff kernel 1 = class 3, score 0.047 (no stuff threshold)
    masks = torch.full((4, 4, 8), -BIG)
    masks[0, :, :3] = BIG  # thing 0 owns columns 0-2
    masks[1, :, 2:5] = BIG  # thing 1 wants 2-4; column 2 goes to thing 0 (higher score·mask)
    masks[2, :, 5:7] = BIG  # stuff 2: columns 5-6
    masks[3, :, 7:] = BIG  # stuff 3: column 7
    return logits, masks


def _run(logits, masks, **kw):
    return knet_panoptic_inference(logits, masks, num_thing_classes=2, num_kernels=2, canvas_size=(4, 8),
                                   valid_size=(4, 8), output_size=(4, 8), **kw)


def test_panoptic_rules_by_hand():
    ids, segs = _run(*_case())
    # visit order: thing0 .88, stuff2 .73, thing1 .38, stuff3 .047
    assert [(s["category_id"], s["isthing"], s["area"]) for s in segs] == [
        (1, True, 12), (2, False, 8), (0, True, 8), (3, False, 4)]
    assert segs[0]["score"] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert ids[:, :3].unique().tolist() == [1] and ids[:, 3:5].unique().tolist() == [3]
    # thing 1 keeps 8 of its 12 pixels: ratio 0.67 passes 0.6, fails 0.7
    _, segs = _run(*_case(), overlap_threshold=0.7)
    assert [s["category_id"] for s in segs] == [1, 2, 3]
    # thing score threshold 0.3 (thing 1 at 0.38); 0.4 drops it and leaves its pixels void
    ids, segs = _run(*_case(), instance_score_threshold=0.4)
    assert [s["category_id"] for s in segs] == [1, 2, 3] and (ids[:, 3:5] == 0).all()


def test_panoptic_shape_errors():
    logits, masks = _case()
    with pytest.raises(ValueError, match="thing \\+ 2 stuff kernels"):
        knet_panoptic_inference(logits[:3], masks[:3], num_thing_classes=2, num_kernels=2, canvas_size=(4, 8),
                                valid_size=(4, 8), output_size=(4, 8))


def test_instance_top_pairs():
    logits, masks = _case()
    res = knet_instance_inference(logits, masks, canvas_size=(4, 8), valid_size=(4, 8), output_size=(4, 8),
                                  max_per_image=3)
    # best (kernel, class) pairs over ALL classes: (2, 0) 9.0, (0, 3) 5.0, (0, 1) 2.0
    assert [(r["category_id"]) for r in res] == [0, 3, 1]
    assert res[0]["mask"][:, 5:7].all() and res[0]["mask"].sum() == 8
    assert res[0]["segmentation"]["size"] == [4, 8]
