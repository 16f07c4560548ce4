"""Bilinear ``align_corners`` rule of the pixel-decoder fuses and the aux semantic decoder.

bytedance aligns corners only when the *source* width is odd. With a 32k+1 canvas and k odd
(e.g. 97) the stride-32 map is k+1 wide, i.e. even, so the stride-32 -> 16 fuse and the aux
semantic decoder's upsamplings use align_corners=False there (found by comparing against the
reference implementation numerically; see docs/parity.md). deeplab2 always aligns corners.
Oracles are hand-computed bilinear values.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kmax_deeplab.config import get_preset
from kmax_deeplab.modeling.kmax import build_kmax
from kmax_deeplab.modeling.kmax import semantic_head as semantic_head_module
from kmax_deeplab.modeling.kmax.pixel_decoder import ResizedFuse, resize_align_corners
from kmax_deeplab.modeling.kmax.semantic_head import AuxSemanticDecoder


def _fuse_row(width: int, out_width: int, rule: str) -> torch.Tensor:
    # Identity channels (1 -> 1 -> 1): no convs, output = resize(low) + high with high = 0.
    fuse = ResizedFuse(1, 1, 1, align_corners=rule)
    low = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    high = torch.zeros(1, 1, 1, out_width)
    return fuse(low, high)[0, 0, 0]


def test_odd_source_width_aligns_corners():
    # [0, 1, 2] -> 5 samples with corners aligned: step (3-1)/(5-1) = 0.5.
    expected = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0])
    torch.testing.assert_close(_fuse_row(3, 5, "bytedance"), expected)
    torch.testing.assert_close(_fuse_row(3, 5, "always"), expected)


def test_even_source_width_uses_half_pixel_centres_in_bytedance_rule():
    # [0, 1, 2, 3] -> 7 samples, half-pixel centres: src = (x + 0.5) * 4/7 - 0.5, clamped at 0
    # and 3; values equal src (the row is linear).
    src = [min(max((x + 0.5) * 4 / 7 - 0.5, 0.0), 3.0) for x in range(7)]
    torch.testing.assert_close(_fuse_row(4, 7, "bytedance"), torch.tensor(src))
    # deeplab2: corners aligned, step (4-1)/(7-1) = 0.5.
    torch.testing.assert_close(_fuse_row(4, 7, "always"), torch.arange(7, dtype=torch.float32) * 0.5)


def test_rule_validation():
    assert resize_align_corners(41) and not resize_align_corners(4) and resize_align_corners(4, "always")
    with pytest.raises(ValueError, match="align_corners rule"):
        resize_align_corners(3, "sometimes")
    with pytest.raises(ValueError, match="align_corners rule"):
        ResizedFuse(1, 1, 1, align_corners="sometimes")


@pytest.mark.parametrize("res5_width, rule, expected", [(4, "bytedance", False), (5, "bytedance", True),
                                                       (4, "always", True)])
def test_aux_semantic_decoder_upsamplings_follow_stride32_width(monkeypatch, res5_width, rule, expected):
    calls = []
    interpolate = F.interpolate

    def spy(x, *args, **kwargs):
        if x.shape[-1] > 1:  # skip the ASPP pooling branch (a 1x1 source)
            calls.append(kwargs.get("align_corners"))
        return interpolate(x, *args, **kwargs)

    head = AuxSemanticDecoder(8, 8, 8, 3, channels=16, align_corners=rule).eval()
    monkeypatch.setattr(semantic_head_module.F, "interpolate", spy)
    w8, w4 = 4 * res5_width - 3, 8 * res5_width - 7
    head(torch.randn(2, 8, 3, res5_width), torch.randn(2, 8, 9, w8), torch.randn(2, 8, 17, w4))
    assert calls == [expected, expected]


@pytest.mark.parametrize("reference, expected", [("bytedance", "bytedance"), ("deeplab2", "always")])
def test_build_kmax_passes_the_rule(reference, expected):
    cfg = get_preset("synthetic/kmax_tiny").model
    cfg.reference = reference
    cfg.image_size = (65, 97)  # stride-32 map 3 x 4: the width is even
    model = build_kmax(cfg).eval()
    assert {f.align_corners for f in model.pixel_decoder._resized_fuses} == {expected}
    assert model.predictor._auxiliary_semantic_predictor.align_corners == expected
    with torch.no_grad():
        out = model(torch.full((1, 3, 65, 97), 127.5))
    assert out["pred_masks"].shape[-2:] == (17, 25)
