"""Function-level equivalence of the deeplab2 -> torch tensor rules (spec §5.2).

For each transpose/flatten rule, an op computed with TensorFlow from the TF variables
(``tf.nn.conv2d``, ``tf.nn.depthwise_conv2d``, ``tf.nn.conv1d``, a Dense matmul, a
broadcast multi-axis batch norm) must equal our module loaded with the converted tensors
(through the real conversion table) on the same input, within 1e-5. Shapes are small but
the TF names are the real ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kmax_deeplab.checkpoints.deeplab2_tf import IGNORED, deeplab2_rows
from kmax_deeplab.checkpoints.table import apply_rows
from kmax_deeplab.modeling.backbones.convnext import ConvNeXtBlock
from kmax_deeplab.modeling.layers.axial_attention import AxialAttention1d
from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct

import tensorflow as tf  # noqa: E402  (test extra; a missing install must fail, not skip)

RNG = np.random.default_rng(0)
EPS_BN = 1e-3


def rand(*shape, low=-1.0, high=1.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


def convert(variables: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    """TF name -> array through the real table; returns our names under ``prefix``, stripped."""
    out, _, unmatched = apply_rows(variables, deeplab2_rows("coco", 133), ignored=IGNORED)
    assert not unmatched, unmatched
    return {k[len(prefix):]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items() if k.startswith(prefix)}


def bn_vars(prefix: str, shape) -> dict[str, np.ndarray]:
    return {f"{prefix}/gamma": rand(*shape, low=0.5, high=1.5), f"{prefix}/beta": rand(*shape),
            f"{prefix}/moving_mean": rand(*shape), f"{prefix}/moving_variance": rand(*shape, low=0.5, high=1.5)}


def tf_bn(x, v: dict, prefix: str):
    return tf.nn.batch_normalization(x, v[f"{prefix}/moving_mean"], v[f"{prefix}/moving_variance"],
                                     v[f"{prefix}/beta"], v[f"{prefix}/gamma"], EPS_BN)


def close(ours: torch.Tensor, ref) -> None:
    np.testing.assert_allclose(ours.detach().numpy(), np.asarray(ref), atol=1e-5, rtol=1e-5)


def load(module: torch.nn.Module, sd: dict) -> torch.nn.Module:
    module.load_state_dict(sd, strict=False)
    missing = {k for k in module.state_dict() if not k.endswith("num_batches_tracked")} - set(sd)
    assert not missing, missing
    return module.eval()


def test_rank4_conv_with_bn():
    """Conv2D ``[kh, kw, in, out]`` -> ``[out, in, kh, kw]`` (by rank), BN gamma/beta/moving_*."""
    tfp = "pixel_decoder/_stages/3/_block1/_conv2_bn_act"
    v = {f"{tfp}/_conv/kernel": rand(3, 3, 6, 10) * 0.3, **bn_vars(f"{tfp}/_batch_norm", (10,))}
    m = load(ConvNormAct(6, 10, 3, norm="BN"), convert(v, "pixel_decoder._stages.3._blocks.0._conv2_bn_act."))
    x = rand(2, 9, 11, 6)  # NHWC
    ref = tf_bn(tf.nn.conv2d(x, v[f"{tfp}/_conv/kernel"], 1, "SAME"), v, f"{tfp}/_batch_norm")
    close(m(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1), ref)


def test_depthwise_5x5():
    """Depthwise ``[5, 5, C, 1]`` -> grouped ``[C, 1, 5, 5]`` (pixel-space head)."""
    tfp = "pixel_space_head/conv_block/_conv1_bn_act/_depthwise"
    v = {f"{tfp}/_depthwise_conv/depthwise_kernel": rand(5, 5, 7, 1), **bn_vars(f"{tfp}/_batch_norm", (7,))}
    m = load(ConvNormAct(7, 7, 5, depthwise=True, norm="BN"), convert(v, "predictor._predictor._pixel_space_head_conv0bnact."))
    x = rand(1, 8, 10, 7)
    ref = tf_bn(tf.nn.depthwise_conv2d(x, v[f"{tfp}/_depthwise_conv/depthwise_kernel"], [1, 1, 1, 1], "SAME"),
                v, f"{tfp}/_batch_norm")
    close(m(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1), ref)


def test_convnext_block_grouped_7x7_dense_layer_scale():
    """A whole TF ConvNeXt block: grouped 7x7 ``[7,7,1,C]``, LN, Dense ``[in,out]``, layer_scale ``[1,1,1,C]``."""
    c = 8
    p = "encoder/stages/1/layer_with_weights-2"
    v = {f"{p}/depthwise_conv/kernel": rand(7, 7, 1, c) * 0.3, f"{p}/depthwise_conv/bias": rand(c),
         f"{p}/norm/gamma": rand(c, low=0.5, high=1.5), f"{p}/norm/beta": rand(c),
         f"{p}/pointwise_conv1/kernel": rand(c, 4 * c) * 0.3, f"{p}/pointwise_conv1/bias": rand(4 * c),
         f"{p}/pointwise_conv2/kernel": rand(4 * c, c) * 0.3, f"{p}/pointwise_conv2/bias": rand(c),
         f"{p}/layer_scale": rand(1, 1, 1, c)}
    m = load(ConvNeXtBlock(c), convert(v, "backbone.stages.1.2."))
    x = rand(2, 9, 9, c)
    # TF Conv2D(groups=C) with kernel [7,7,1,C]: output c sees input channel c only, i.e. a
    # depthwise conv with kernel [7,7,C,1] (CPU TF has no grouped conv2d kernel).
    k = np.transpose(v[f"{p}/depthwise_conv/kernel"], (0, 1, 3, 2))
    y = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME") + v[f"{p}/depthwise_conv/bias"]
    mean, var = tf.nn.moments(y, axes=[-1], keepdims=True)
    y = (y - mean) / tf.sqrt(var + 1e-6) * v[f"{p}/norm/gamma"] + v[f"{p}/norm/beta"]
    y = tf.matmul(y, v[f"{p}/pointwise_conv1/kernel"]) + v[f"{p}/pointwise_conv1/bias"]
    y = tf.nn.gelu(y, approximate=False)
    y = tf.matmul(y, v[f"{p}/pointwise_conv2/kernel"]) + v[f"{p}/pointwise_conv2/bias"]
    ref = x + v[f"{p}/layer_scale"] * y
    close(m(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1), ref)


def test_conv1d_rank3_on_queries():
    """Conv1D ``[k, in, out]`` -> Conv1d ``[out, in, k]`` (the query FFN)."""
    tfp = "transformer_decoder/_kmax_decoder/2/_block1_transformer/_memory_ffn_conv1_bn_act"
    v = {f"{tfp}/_conv/kernel": rand(1, 12, 20) * 0.3, **bn_vars(f"{tfp}/_batch_norm", (20,))}
    m = load(ConvNormAct(12, 20, 1, dim=1, norm="BN"),
             convert(v, "predictor._kmax_transformer_layers.2._query_ffn_conv1_bn_act."))
    x = rand(2, 5, 12)  # [B, N, in]
    ref = tf_bn(tf.nn.conv1d(x, v[f"{tfp}/_conv/kernel"], 1, "VALID"), v, f"{tfp}/_batch_norm")
    close(m(torch.from_numpy(x).transpose(1, 2)).transpose(1, 2), ref)


def test_pixel_conv1d_to_1x1_conv2d():
    """Pixel Conv1D ``[1, in, out]`` over flattened pixels -> Conv2d 1x1 ``[out, in, 1, 1]``."""
    tfp = "transformer_decoder/_kmax_decoder/0/_block1_transformer/_pixel_v_conv_bn"
    v = {f"{tfp}/_conv/kernel": rand(1, 6, 9) * 0.3, **bn_vars(f"{tfp}/_batch_norm", (9,))}
    m = load(ConvNormAct(6, 9, 1, norm="BN"), convert(v, "predictor._kmax_transformer_layers.0._pixel_v_conv_bn."))
    x = rand(2, 4, 5, 6)
    ref = tf_bn(tf.nn.conv1d(x.reshape(2, 20, 6), v[f"{tfp}/_conv/kernel"], 1, "VALID"), v, f"{tfp}/_batch_norm")
    ours = m(torch.from_numpy(x).permute(0, 3, 1, 2))  # [B, out, H, W]
    close(ours.flatten(2).transpose(1, 2), ref)


def test_qkv_kernel_and_cluster_centers():
    """``qkv_kernel`` ``[in, out]`` -> ``[out, in, 1]``; ``cluster_centers`` ``[1, N, D]`` -> ``[D, N]``."""
    ax = "pixel_decoder/_stages/1/_block1/_attention/_width_axis"
    v = {f"{ax}/qkv_kernel": rand(6, 16), "transformer_decoder/cluster_centers": rand(1, 5, 6)}
    ours = convert(v, "")
    att = AxialAttention1d(6, 7, key_depth=4, value_depth=8, num_heads=2)
    att.qkv_transform.load_state_dict({"conv.weight": ours[
        "pixel_decoder._stages.1._blocks.0._attention._width_axis.qkv_transform.conv.weight"]})
    centers = ours["predictor._cluster_centers.weight"]  # [D, N], used as queries [1, D, N]
    # TF: the memory [1, N, D] times the qkv Dense kernel; ours: Conv1d over [1, D, N].
    ref = tf.matmul(v["transformer_decoder/cluster_centers"], v[f"{ax}/qkv_kernel"])  # [1, N, 16]
    close(att.qkv_transform(centers.unsqueeze(0)).transpose(1, 2), ref)


@pytest.mark.parametrize("which", ["similarity", "retrieved_output", "transformer_retrieved_value"])
def test_multi_axis_bn_flattening(which):
    """Multi-axis BN statistics flattened in C order == TF's broadcast BN on (type, head, depth) axes.

    ``x`` holds our channels split into (type, head, depth) axes: ``[B, T, h, d, L...]``; our BN
    sees ``[B, T*h*d, L...]`` (channel = (t*h + head)*d + depth, as the modules concatenate).
    TF broadcasts its statistics over a tensor whose trailing axes line up with the stat shape.
    """
    h, dv, n, b = 3, 4, 5, 2
    if which == "similarity":  # TF [3, 1, h, 1, 1]; ours BN(3h) over [B, 3h, L, L]
        tfp = "pixel_decoder/_stages/0/_block1/_attention/_height_axis/_batch_norm_similarity"
        ours_name = "pixel_decoder._stages.0._blocks.0._attention._height_axis._batch_norm_similarity."
        stat, axes = (3, 1, h, 1, 1), (3, h, 1)
        x = rand(b, 3, h, 1, n, n)
        to_tf = (0, 1, 4, 2, 5, 3)  # [B, 3, L, h, L, 1]: last five (3, L, h, L, 1) meet [3, 1, h, 1, 1]
    elif which == "retrieved_output":  # TF [2, 1, h, 1, dv]; ours BN(2*h*dv) over [B, 2*h*dv, L]
        tfp = "pixel_decoder/_stages/0/_block1/_attention/_height_axis/_batch_norm_retrieved_output"
        ours_name = "pixel_decoder._stages.0._blocks.0._attention._height_axis._batch_norm_retrieved_output."
        stat, axes = (2, 1, h, 1, dv), (2, h, dv)
        x = rand(b, 2, h, dv, n)[:, :, :, None]  # [B, 2, h, 1, dv, L]
        x = np.ascontiguousarray(np.transpose(x, (0, 1, 2, 4, 3, 5)))  # [B, 2, h, dv, 1, L]
        to_tf = (0, 1, 5, 2, 4, 3)  # [B, 2, L, h, 1, dv]: last five meet [2, 1, h, 1, dv]
    else:  # TF [1, h, 1, dv]; ours BN(h*dv) over [B, h*dv, N]
        tfp = "transformer_decoder/_kmax_decoder/1/_block1_transformer/_memory_attention/_batch_norm_retrieved_value"
        ours_name = "predictor._kmax_transformer_layers.1._query_self_attention._batch_norm_retrieved_value."
        stat, axes = (1, h, 1, dv), (1, h, dv)
        x = rand(b, 1, h, dv, 1, n)
        to_tf = (0, 5, 2, 4, 3, 1)  # [B, N, h, 1, dv, 1] -> squeeze the last: last four meet [1, h, 1, dv]
    v = bn_vars(tfp, stat)
    n_ch = int(np.prod(axes))
    bn = load(torch.nn.BatchNorm1d(n_ch, eps=EPS_BN), convert(v, ours_name))
    ours = bn(torch.from_numpy(x.reshape(b, n_ch, -1))).reshape(x.shape).detach().numpy()
    # Per-channel formula with the TF statistics indexed by (type, head, depth).
    g, be, mu, var = (v[f"{tfp}/{p}"].reshape(axes)[(slice(None),) * 3 + (None,) * (x.ndim - 4)]
                      for p in ("gamma", "beta", "moving_mean", "moving_variance"))
    np.testing.assert_allclose(ours, (x - mu) / np.sqrt(var + EPS_BN) * g + be, atol=1e-5, rtol=1e-5)
    # TF's own broadcast batch norm in a TF axis order gives the same numbers.
    xt = np.transpose(x, to_tf)
    if which == "transformer_retrieved_value":
        xt = xt[..., 0]
    ref = np.asarray(tf_bn(xt, v, tfp))
    np.testing.assert_allclose(np.transpose(ours, to_tf).reshape(ref.shape), ref, atol=1e-5, rtol=1e-5)
