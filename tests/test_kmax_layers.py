"""Conv-norm wrappers and position-sensitive axial attention against naive loops (spec §1.2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kmax_deeplab.modeling.layers import (
    BN_EPS,
    BN_MOMENTUM,
    AxialAttention1d,
    AxialAttention2d,
    ConvNormAct,
    RelativePositionalEncoding,
)
from kmax_test_utils import randomise_batch_norms


def _bn(x: float, bn: nn.BatchNorm1d | nn.BatchNorm2d, ch: int) -> torch.Tensor:
    return (x - bn.running_mean[ch]) / torch.sqrt(bn.running_var[ch] + bn.eps) * bn.weight[ch] + bn.bias[ch]


def test_conv_norm_act_keys_constants_and_init():
    m = ConvNormAct(8, 16, 3, act="gelu")
    assert set(m.state_dict()) == {"conv.weight", "norm.weight", "norm.bias", "norm.running_mean",
                                   "norm.running_var", "norm.num_batches_tracked"}
    assert m.norm.eps == BN_EPS == 1e-3 and m.norm.momentum == BN_MOMENTUM == 0.01
    assert m.conv.padding == (1, 1) and m.conv.bias is None
    # he_normal truncated at 2 std: std sqrt(2/8) = 0.5 -> every |w| <= 1.
    assert m.conv.weight.abs().max() <= 1.0 + 1e-6
    d = ConvNormAct(6, 6, 5, depthwise=True, dim=2)
    assert d.conv.weight.shape == (6, 1, 5, 5) and d.conv.groups == 6
    one = ConvNormAct(4, 5, 1, dim=1, bias=True, norm="none")
    assert set(one.state_dict()) == {"conv.weight", "conv.bias"}
    assert one(torch.randn(2, 4, 7)).shape == (2, 5, 7)
    z = ConvNormAct(4, 4, 1, norm_init_zero=True)
    assert torch.all(z.norm.weight == 0)
    a = ConvNormAct(4, 4, 3, dilation=6)
    assert a.conv.padding == (6, 6)
    with pytest.raises(ValueError):
        ConvNormAct(4, 5, 3, depthwise=True)


def test_relative_position_index_is_key_minus_query_plus_254():
    rpe = RelativePositionalEncoding(5, 3)
    table = rpe()
    for q in range(5):
        for k in range(5):
            assert torch.equal(table[q, k], rpe._embeddings.weight[k - q + 254])
    assert rpe._embeddings.weight.shape == (509, 3)
    assert "index" not in rpe.state_dict()
    with pytest.raises(ValueError):
        RelativePositionalEncoding(256, 3)


def _naive_axial_1d(att: AxialAttention1d, x: torch.Tensor) -> torch.Tensor:
    """Per-position loop over heads/queries/keys, BNs applied channel by channel (eval mode)."""
    b, _, length = x.shape
    heads, kd, vd = att.num_heads, att.key_depth, att.value_depth
    dk, dv = kd // heads, vd // heads
    w = att.qkv_transform.conv.weight[:, :, 0]  # [2kd+vd, Cin]
    eq, ek, ev = (att._query_rpe._embeddings.weight, att._key_rpe._embeddings.weight,
                  att._value_rpe._embeddings.weight)
    out = torch.zeros(b, vd, length, dtype=torch.float64)
    for n in range(b):
        qkv = w.double() @ x[n].double()  # [2kd+vd, L]
        for c in range(qkv.shape[0]):
            qkv[c] = _bn(qkv[c], att._batch_norm_qkv, c)
        q, k, v = qkv[:kd], qkv[kd:2 * kd], qkv[2 * kd:]
        for h in range(heads):
            qh, kh, vh = q[h * dk:(h + 1) * dk], k[h * dk:(h + 1) * dk], v[h * dv:(h + 1) * dv]
            for lq in range(length):
                logits = []
                for m in range(length):
                    r = m - lq + 254
                    terms = [qh[:, lq] @ kh[:, m], qh[:, lq] @ eq[r].double(), kh[:, m] @ ek[r].double()]
                    logits.append(sum(_bn(t, att._batch_norm_similarity, typ * heads + h)
                                      for typ, t in enumerate(terms)))
                weights = torch.softmax(torch.stack(logits), 0)
                content = sum(weights[m] * vh[:, m] for m in range(length))
                position = sum(weights[m] * ev[m - lq + 254].double() for m in range(length))
                for d in range(dv):
                    out[n, h * dv + d, lq] = (
                        _bn(content[d], att._batch_norm_retrieved_output, h * dv + d)
                        + _bn(position[d], att._batch_norm_retrieved_output, vd + h * dv + d))
    return out


@torch.no_grad()
def test_axial_attention_1d_matches_naive_loop():
    torch.manual_seed(0)
    att = AxialAttention1d(6, 5, key_depth=4, value_depth=8, num_heads=2).eval()
    randomise_batch_norms(att)
    assert att._batch_norm_similarity.num_features == 6 and att._batch_norm_retrieved_output.num_features == 16
    x = torch.randn(2, 6, 5)
    got = att(x)
    assert got.shape == (2, 8, 5)
    torch.testing.assert_close(got.double(), _naive_axial_1d(att, x), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_axial_attention_2d_runs_height_then_width():
    torch.manual_seed(1)
    att = AxialAttention2d(6, (5, 3), 4, num_heads=2).eval()
    randomise_batch_norms(att)
    x = torch.randn(2, 6, 5, 3)
    got = att(x)
    ref = torch.zeros(2, 8, 5, 3)
    mid = torch.zeros(2, 8, 5, 3)
    for n in range(2):
        for col in range(3):  # height axis: each column is a sequence over H
            mid[n, :, :, col] = att._height_axis(x[n:n + 1, :, :, col])[0]
        for row in range(5):  # width axis on the height output
            ref[n, :, row, :] = att._width_axis(mid[n:n + 1, :, row, :])[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="built for a 5x3"):
        att(torch.randn(1, 6, 3, 5))



def test_trunc_normal_is_a_truncated_normal():
    import math

    from kmax_deeplab.modeling.layers.conv_norm import trunc_normal_

    torch.manual_seed(0)
    x = trunc_normal_(torch.empty(200_000), 0.5)
    assert x.abs().max() <= 1.0  # cut at 2 std
    # N(0, 1) truncated to ±2 has std sqrt(1 - 4 φ(2) / (2 Φ(2) - 1)) = 0.8796.
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    expected = 0.5 * math.sqrt(1 - 4 * phi2 / math.erf(2 / math.sqrt(2)))
    assert abs(x.std().item() - expected) < 3e-3 and abs(x.mean().item()) < 3e-3
    assert (x.abs() > 0.9).float().mean() > 0.01  # the tails near the cut are populated
