"""Deformable convolution v1/v2 (``modeling/layers/deform_conv.py``) against a direct loop.

The oracle is a per-output-pixel, per-kernel-point Python loop written from mmcv 1.7.2's CPU
kernel (``ops/csrc/pytorch/cpu/modulated_deform_conv.cpp``: ``modulated_deformable_im2col_cpu_kernel``
and ``dmcn_im2col_bilinear_cpu``): offset channels ``g*2K + 2p`` (Δh) and ``+1`` (Δw), mask
channel ``g*K + p``, a sample only when ``-1 < h < H`` and ``-1 < w < W``, each neighbour outside
the image read as 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kmax_deeplab.modeling.layers.deform_conv import (
    DeformConv2dPack,
    ModulatedDeformConv2dPack,
    build_dcn,
    deform_conv2d,
)


def _bilinear(img: np.ndarray, h: float, w: float) -> float:
    """``dmcn_im2col_bilinear_cpu`` for one channel ``img`` [H, W]."""
    height, width = img.shape
    hl, wl = math.floor(h), math.floor(w)
    hh, wh = hl + 1, wl + 1
    lh, lw = h - hl, w - wl
    v = lambda y, x: img[y, x] if 0 <= y <= height - 1 and 0 <= x <= width - 1 else 0.0  # noqa: E731
    return ((1 - lh) * (1 - lw) * v(hl, wl) + (1 - lh) * lw * v(hl, wh) + lh * (1 - lw) * v(hh, wl)
            + lh * lw * v(hh, wh))


def loop_deform_conv(x, offset, weight, bias, mask, stride, pad, dil, groups, dg):
    """Direct loop over batch, output pixel, output channel, input channel and kernel point (float64)."""
    x, offset, weight = x.double().numpy(), offset.double().numpy(), weight.double().numpy()
    mask = None if mask is None else mask.double().numpy()
    b, c, height, width = x.shape
    c_out, cpg, kh, kw = weight.shape
    _, _, ho, wo = offset.shape
    k = kh * kw
    out = np.zeros((b, c_out, ho, wo))
    for n in range(b):
        for y in range(ho):
            for xo in range(wo):
                col = np.zeros((c, kh, kw))
                for ci in range(c):
                    g = ci // (c // dg)
                    for i in range(kh):
                        for j in range(kw):
                            p = i * kw + j
                            h = y * stride[0] - pad[0] + i * dil[0] + offset[n, g * 2 * k + 2 * p, y, xo]
                            w = xo * stride[1] - pad[1] + j * dil[1] + offset[n, g * 2 * k + 2 * p + 1, y, xo]
                            val = _bilinear(x[n, ci], h, w) if (h > -1 and w > -1 and h < height and w < width) else 0.0
                            if mask is not None:
                                val *= mask[n, g * k + p, y, xo]
                            col[ci, i, j] = val
                for o in range(c_out):
                    gi = o // (c_out // groups)
                    out[n, o, y, xo] = (weight[o] * col[gi * cpg:(gi + 1) * cpg]).sum()
                    if bias is not None:
                        out[n, o, y, xo] += float(bias[o])
    return torch.from_numpy(out)


CASES = [
    # (stride, padding, dilation, groups, deform_groups, modulated, kernel)
    ((1, 1), (1, 1), (1, 1), 1, 1, True, 3),
    ((2, 2), (1, 1), (1, 1), 1, 2, True, 3),
    ((1, 1), (2, 2), (2, 2), 2, 2, False, 3),
    ((2, 1), (0, 2), (1, 2), 1, 1, False, 3),
    ((1, 2), (1, 0), (2, 1), 2, 1, True, (3, 2)),
]


@pytest.mark.parametrize("stride,pad,dil,groups,dg,modulated,kernel", CASES)
def test_matches_direct_loop(stride, pad, dil, groups, dg, modulated, kernel):
    gen = torch.Generator().manual_seed(hash((stride, pad, dil, groups, dg, modulated)) % 2**31)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    b, c, c_out, h, w = 2, 4, 6, 6, 7
    x = torch.randn(b, c, h, w, generator=gen)
    ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    # offsets of a few pixels: many samples land outside the image, some on the far side of it
    offset = 3.0 * torch.randn(b, dg * 2 * kh * kw, ho, wo, generator=gen)
    offset[0, :, 0, 0] = -50.0  # every tap of this pixel far outside: output = bias only
    weight = torch.randn(c_out, c // groups, kh, kw, generator=gen)
    bias = torch.randn(c_out, generator=gen)
    mask = torch.rand(b, dg * kh * kw, ho, wo, generator=gen) if modulated else None
    got = deform_conv2d(x, offset, weight, bias, mask=mask, stride=stride, padding=pad, dilation=dil,
                        groups=groups, deform_groups=dg)
    ref = loop_deform_conv(x, offset, weight, bias, mask, stride, pad, dil, groups, dg)
    assert got.shape == ref.shape == (b, c_out, ho, wo)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0, :, 0, 0].double(), bias.double(), atol=1e-6, rtol=0)


def test_zero_offsets_equal_conv2d():
    """Zero offsets (v1), or zero offsets and mask 1 (v2): exactly ``F.conv2d``."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 9, 8, generator=gen)
    weight = torch.randn(4, 3, 3, 3, generator=gen)
    ref = torch.nn.functional.conv2d(x, weight, None, 2, 2, 2, 2)
    off = torch.zeros(2, 2 * 9 * 3, ref.shape[2], ref.shape[3])
    got = deform_conv2d(x, off, weight, stride=2, padding=2, dilation=2, groups=2, deform_groups=3)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    got2 = deform_conv2d(x, off, weight, mask=torch.ones(2, 27, *ref.shape[2:]), stride=2, padding=2,
                         dilation=2, groups=2, deform_groups=3)
    torch.testing.assert_close(got2, ref, atol=1e-5, rtol=1e-5)


def test_integer_offsets_shift_the_input():
    """An offset of (+1, -2) everywhere samples the input one row down and two columns left."""
    x = torch.randn(1, 1, 6, 7)
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0  # centre tap only
    off = torch.zeros(1, 18, 6, 7)
    off[:, 0::2] = 1.0
    off[:, 1::2] = -2.0
    got = deform_conv2d(x, off, weight, padding=1)
    ref = torch.zeros(1, 1, 6, 7)
    ref[..., :5, 2:] = x[..., 1:, :5]
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("modulated", [False, True])
def test_gradcheck_float64(modulated):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    # offsets well away from integers, so that floor() stays put within gradcheck's eps
    off = (torch.randint(-3, 3, (1, 2 * 2 * 9, 2, 3), generator=gen).double()
           + 0.2 + 0.6 * torch.rand(1, 36, 2, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    inputs = [x, off, weight, bias]
    if modulated:
        inputs.append(torch.rand(1, 18, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True))

    def fn(x, off, weight, bias, mask=None):
        return deform_conv2d(x, off, weight, bias, mask=mask, stride=2, padding=1, deform_groups=2)

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-6)


def test_packs_mmcv_layout_and_init():
    v1 = DeformConv2dPack(8, 16, 3, stride=2, padding=1, deform_groups=2)
    v2 = ModulatedDeformConv2dPack(8, 16, 3, padding=2, dilation=2)
    assert {k: tuple(v.shape) for k, v in v1.state_dict().items()} == {
        "weight": (16, 8, 3, 3), "conv_offset.weight": (36, 8, 3, 3), "conv_offset.bias": (36,)}
    assert {k: tuple(v.shape) for k, v in v2.state_dict().items()} == {
        "weight": (16, 8, 3, 3), "conv_offset.weight": (27, 8, 3, 3), "conv_offset.bias": (27,)}
    assert not v1.conv_offset.weight.any() and not v2.conv_offset.bias.any()
    x = torch.randn(2, 8, 9, 10)
    # zero-initialised offsets: v1 is a plain conv, v2 the same conv times sigmoid(0) = 0.5
    ref1 = torch.nn.functional.conv2d(x, v1.weight, None, 2, 1)
    torch.testing.assert_close(v1(x), ref1, atol=1e-5, rtol=1e-5)
    ref2 = torch.nn.functional.conv2d(x, v2.weight, None, 1, 2, 2)
    torch.testing.assert_close(v2(x), 0.5 * ref2, atol=1e-5, rtol=1e-5)
    # v2's conv_offset output is [o1 | o2 | mask]: a bias on the last third moves only the mask
    with torch.no_grad():
        v2.conv_offset.bias[18:] = 30.0
    torch.testing.assert_close(v2(x), ref2, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        v2.conv_offset.bias[:18] = 0.25
    off, mask = v2.offsets_and_mask(x)
    assert off.shape == (2, 18, 9, 10) and torch.all(off == 0.25) and torch.all(mask > 0.999)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="offset must be"):
        deform_conv2d(torch.zeros(1, 2, 5, 5), torch.zeros(1, 17, 5, 5), torch.zeros(2, 2, 3, 3), padding=1)
    with pytest.raises(ValueError, match="deform_groups"):
        deform_conv2d(torch.zeros(1, 3, 5, 5), torch.zeros(1, 36, 5, 5), torch.zeros(2, 3, 3, 3), padding=1,
                      deform_groups=2)
    with pytest.raises(ValueError, match="unknown deformable conv type 'DCNv3'"):
        build_dcn("DCNv3", 4, 4, 3)
