"""MaX-DeepLab "pixelwise" post-processing against deeplab2's own post-processor (spec §4).

Oracle: ``tests/data/parity/max_deeplab/deeplab2_max_postprocess.npz`` from
``tools/deeplab2_max_postprocess.py`` (deeplab2 @64bc1c1 ``_get_panoptic_predictions``,
pixelwise, thresholds 0.7 / 0.4, area limits 20 / 40 on a 33x33 canvas; ids 1-2 things,
3-4 stuff, 0 void, divisor 256), five seeded cases including one without a confident slot.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _max_parity import DATA
from kmax_deeplab.modeling.postprocess import pixelwise_panoptic_inference

IS_THING = [True, True, False, False]  # train ids 0..3 = deeplab2 ids 1..4


@pytest.mark.parametrize("case", [0, 1, 2, 3, 4])
def test_pixelwise_equals_deeplab2(case):
    rec = np.load(DATA / "deeplab2_max_postprocess.npz")
    masks = torch.from_numpy(rec[f"case{case}/mask_logits"]).permute(2, 0, 1)  # [h, w, N] -> [N, h, w]
    logits = torch.from_numpy(rec[f"case{case}/class_logits"])
    ids, info, label_map = pixelwise_panoptic_inference(
        logits, masks, is_thing=IS_THING, train_id_to_category_id=[1, 2, 3, 4], canvas_size=(33, 33),
        thing_area_limit=20, stuff_area_limit=40, return_label_map=True)
    assert np.array_equal(label_map.numpy(), rec[f"case{case}/panoptic"])
    # the shared contract: ids 1..K, segments_info consistent with the map
    assert ids.dtype == torch.int32 and tuple(ids.shape) == (33, 33)
    counts = torch.bincount(ids.flatten().long())
    assert sorted(s["id"] for s in info) == [i for i in range(1, len(counts)) if counts[i] > 0]
    for seg in info:
        assert seg["area"] == int(counts[seg["id"]])
        assert seg["isthing"] == (seg["category_id"] in (1, 2))
        assert 0.7 <= seg["score"] <= 1.0
    stuff_cats = [s["category_id"] for s in info if not s["isthing"]]
    assert len(stuff_cats) == len(set(stuff_cats))  # one segment per stuff class


def test_pixelwise_geometry_and_errors():
    rec = np.load(DATA / "deeplab2_max_postprocess.npz")
    masks = torch.from_numpy(rec["case1/mask_logits"]).permute(2, 0, 1)
    logits = torch.from_numpy(rec["case1/class_logits"])
    full, _ = pixelwise_panoptic_inference(logits, masks, is_thing=IS_THING, canvas_size=(33, 33))
    ids, info = pixelwise_panoptic_inference(logits, masks, is_thing=IS_THING, canvas_size=(33, 33),
                                             valid_size=(25, 17), output_size=(50, 34))
    assert tuple(ids.shape) == (50, 34)
    assert torch.equal(ids[::2, ::2], full[:25, :17])  # crop, then nearest x2
    with pytest.raises(ValueError, match=r"\[N, C\+1\]"):
        pixelwise_panoptic_inference(logits[:, :4], masks, is_thing=IS_THING)
