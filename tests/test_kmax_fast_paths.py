"""The optimised forward paths compute what the plain formulation computes (issue #4).

Oracles: straightforward re-statements of spec §1.2-§1.4 written with the modules' own
parameters (a gathered ``[L, L, d]`` table, ``cat`` + BN modules in batch-statistics
mode, ``F.conv1d``), compared in training mode (outputs, running statistics, gradients)
and eval mode; and the fp32 islands of spec §7.7 under CPU bf16 autocast.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from kmax_deeplab.config import get_preset
from kmax_deeplab.modeling.kmax import build_kmax
from kmax_deeplab.modeling.kmax import transformer_decoder as td
from kmax_deeplab.modeling.kmax.predictor import KMaXPredictor
from kmax_deeplab.modeling.layers import AxialAttention1d, AxialAttention2d, ConvNormAct, LayerNorm2d
from kmax_test_utils import randomise_batch_norms


def _plain_axial_1d(att: AxialAttention1d, x: torch.Tensor) -> torch.Tensor:
    """Spec §1.2 one axis as written: conv1d, BN, gathered tables, cat + BN(3h), cat + BN(2V)."""
    b, _, length = x.shape
    h = att.num_heads
    qkv = att._batch_norm_qkv(F.conv1d(x, att.qkv_transform.conv.weight))
    q, k, v = torch.split(qkv, [att.key_depth, att.key_depth, att.value_depth], dim=1)
    q, k, v = (t.reshape(b, h, -1, length) for t in (q, k, v))
    r_q, r_k, r_v = att._query_rpe(), att._key_rpe(), att._value_rpe()
    logits = torch.cat([torch.einsum("bhdl,bhdm->bhlm", q, k),
                        torch.einsum("bhdl,lmd->bhlm", q, r_q),
                        torch.einsum("bhdm,lmd->bhlm", k, r_k)], dim=1)
    logits = att._batch_norm_similarity(logits).reshape(b, 3, h, length, length).sum(1)
    w = logits.float().softmax(-1)
    out = torch.cat([torch.einsum("bhlm,bhdm->bhdl", w, v), torch.einsum("bhlm,lmd->bhdl", w, r_v)], dim=1)
    out = att._batch_norm_retrieved_output(out.reshape(b, 2 * att.value_depth, length))
    return out.reshape(b, 2, att.value_depth, length).sum(1)


def _plain_axial_2d(att: AxialAttention2d, x: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = x.shape
    v = att.value_depth
    y = _plain_axial_1d(att._height_axis, x.permute(0, 3, 1, 2).reshape(b * ww, c, hh))
    y = y.reshape(b, ww, v, hh).permute(0, 3, 2, 1).reshape(b * hh, v, ww)
    y = _plain_axial_1d(att._width_axis, y)
    return y.reshape(b, hh, v, ww).permute(0, 2, 1, 3)


def _bn_state(m: nn.Module) -> dict:
    return {k: t.clone() for k, t in m.state_dict().items() if "running" in k or "num_batches" in k}


def _grads(m: nn.Module) -> dict:
    return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def _check_train_and_eval(fast: nn.Module, plain, x: torch.Tensor, tol: float = 1e-4) -> None:
    """Same outputs, running statistics and gradients in training mode; same outputs in eval."""
    ref = copy.deepcopy(fast)
    for mode in ("train", "eval"):
        fast.train(mode == "train")
        ref.train(mode == "train")
        fast.zero_grad()
        ref.zero_grad()
        xf = x.clone().requires_grad_()
        xr = x.clone().requires_grad_()
        got, want = fast(xf), plain(ref, xr)
        torch.testing.assert_close(got, want.to(got.dtype), rtol=tol, atol=tol)
        probe = torch.randn_like(got)
        (got * probe).sum().backward()
        (want * probe).sum().backward()
        torch.testing.assert_close(xf.grad, xr.grad, rtol=tol, atol=tol)
        gf, gr = _grads(fast), _grads(ref)
        assert gf and sorted(gf) == sorted(gr)
        for key in gf:
            # fp32 rounding differs between the fused and the plain path: compare each
            # gradient relative to its own scale (a parameter whose softmax-invariant
            # gradient is ~0, e.g. the similarity BN bias, keeps the absolute tol).
            scale = max(1.0, gr[key].abs().max().item())
            torch.testing.assert_close(gf[key], gr[key], rtol=tol, atol=tol * scale, msg=key)
        sf, sr = _bn_state(fast), _bn_state(ref)
        for key in sf:
            torch.testing.assert_close(sf[key], sr[key], rtol=1e-5, atol=1e-6, msg=key)


def test_axial_1d_train_and_eval_match_plain_stack_and_bn():
    torch.manual_seed(0)
    att = AxialAttention1d(6, 7, key_depth=4, value_depth=8, num_heads=2)
    randomise_batch_norms(att)
    _check_train_and_eval(att, _plain_axial_1d, torch.randn(3, 6, 7))


def test_axial_2d_train_and_eval_match_plain_per_column_then_row():
    torch.manual_seed(1)
    att = AxialAttention2d(6, (5, 4), 4, num_heads=2)
    randomise_batch_norms(att, seed=1)
    _check_train_and_eval(att, _plain_axial_2d, torch.randn(2, 6, 5, 4))


def test_axial_without_norm_matches_plain():
    torch.manual_seed(2)
    att = AxialAttention2d(4, (3, 3), 4, num_heads=2, norm="none")
    _check_train_and_eval(att, _plain_axial_2d, torch.randn(2, 4, 3, 3))


def _plain_conv_norm_act(m: ConvNormAct, x: torch.Tensor) -> torch.Tensor:
    return m.act(m.norm(F.conv1d(x, m.conv.weight, m.conv.bias)))


@pytest.mark.parametrize("bias,norm,act", [(False, "BN", "gelu"), (True, "none", None), (True, "BN", None)])
def test_query_1x1_conv_matches_conv1d(bias, norm, act):
    torch.manual_seed(3)
    m = ConvNormAct(8, 5, 1, dim=1, bias=bias, norm=norm, act=act)
    randomise_batch_norms(m)
    if bias:
        nn.init.normal_(m.conv.bias)
    _check_train_and_eval(m, _plain_conv_norm_act, torch.randn(3, 8, 6), tol=1e-5)


def _plain_predictor_masks(p: KMaXPredictor, inputs: torch.Tensor) -> torch.Tensor:
    mask_emb, class_emb, pixel = inputs
    x = F.normalize(p._pixel_space_head_last_convbn(p._pixel_space_head_conv1bnact(
        p._pixel_space_head_conv0bnact(pixel))), dim=1)
    logits = torch.einsum("bdhw,bdn->bnhw", x, p._transformer_mask_head(mask_emb))
    return p._pixel_space_mask_batch_norm(logits.unsqueeze(1)).squeeze(1)


def test_predictor_mask_logits_match_plain_einsum_and_1_channel_bn():
    torch.manual_seed(4)
    p = KMaXPredictor(6, 3, query_dim=8, hidden_dim=8, pixel_feature_dim=4)
    randomise_batch_norms(p)
    inputs = (torch.randn(2, 8, 5), torch.randn(2, 8, 5), torch.randn(2, 6, 7, 7))

    class Masks(nn.Module):
        def __init__(self, pred):
            super().__init__()
            self.pred = pred

        def forward(self, pixel):
            return self.pred(inputs[0], inputs[1], pixel)["mask_logits"]

    wrapped = Masks(p)
    _check_train_and_eval(wrapped, lambda m, pixel: _plain_predictor_masks(m.pred, (*inputs[:2], pixel)), inputs[2])


def _plain_layer_norm_2d(m: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    xf = x.double()
    mean = xf.mean(1, keepdim=True)
    var = (xf - mean).pow(2).mean(1, keepdim=True)
    y = (xf - mean) / torch.sqrt(var + m.eps)
    return (m.weight.double()[:, None, None] * y + m.bias.double()[:, None, None]).float()


def test_layer_norm_2d_matches_per_pixel_formula():
    torch.manual_seed(5)
    m = LayerNorm2d(6)
    nn.init.normal_(m.weight)
    nn.init.normal_(m.bias)
    _check_train_and_eval(m, _plain_layer_norm_2d, torch.randn(2, 6, 4, 5) * 3 + 1, tol=1e-5)


class _DtypeLog(TorchDispatchMode):
    """Records (op name, output dtypes, inside-which-island) for every aten op."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple, str]] = []
        self.island = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        dtypes = tuple(t.dtype for t in outs if isinstance(t, torch.Tensor))
        self.ops.append((func.overloadpacket.__name__, dtypes, self.island))
        return out


def test_fp32_islands_under_cpu_bf16_autocast(monkeypatch):
    """Spec §7.7: softmaxes, the k-means einsum and LayerNorm stay fp32 under autocast."""
    cfg = get_preset("synthetic/kmax_tiny").model
    torch.manual_seed(0)
    model = build_kmax(cfg).eval()
    log = _DtypeLog()

    def mark(name):
        def pre(module, args):
            log.island = name

        def post(module, args, out):
            log.island = ""
        return pre, post

    for m in model.modules():
        if isinstance(m, LayerNorm2d):
            pre, post = mark("layernorm")
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)
    kmeans_dtypes = []
    real_update = td.kmeans_update

    def update(assignment, pixel_value):
        log.island = "kmeans"
        out = real_update(assignment, pixel_value)
        log.island = ""
        kmeans_dtypes.append((pixel_value.dtype, out.dtype))
        return out

    monkeypatch.setattr(td, "kmeans_update", update)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), log:
        out = model(torch.rand(1, 3, 129, 129) * 255)
    ops = log.ops
    # autocast really ran: the convolutions / matmuls outside the islands are bf16
    assert any(name in ("convolution", "mkldnn_convolution", "bmm", "mm") and torch.bfloat16 in dt
               for name, dt, isl in ops if not isl)
    softmaxes = [dt for name, dt, _ in ops if name in ("_softmax", "softmax")]
    axial_axes = 2 * sum(isinstance(m, AxialAttention2d) for m in model.modules())
    assert len(softmaxes) == axial_axes + sum(cfg.transformer_layers)
    assert all(dt == (torch.float32,) for dt in softmaxes)
    # k-means: called once per layer on bf16 pixel values, every op of it in fp32
    assert len(kmeans_dtypes) == sum(cfg.transformer_layers)
    assert all(d_out == torch.float32 for _, d_out in kmeans_dtypes)
    kmeans_ops = [(name, dt) for name, dt, isl in ops if isl == "kmeans"]
    assert any(name in ("bmm", "mm", "scatter_add", "index_add") for name, _ in kmeans_ops)
    assert all(dt == (torch.float32,) for name, dt in kmeans_ops if name not in ("_to_copy",))
    # LayerNorm2d: all arithmetic in fp32 (only the final cast back is bf16)
    ln_ops = [(name, dt) for name, dt, isl in ops if isl == "layernorm"]
    arithmetic = [(n, dt) for n, dt in ln_ops if n not in ("_to_copy", "clone", "permute", "contiguous",
                                                         "view", "_unsafe_view", "t", "detach")]
    assert arithmetic and all(all(d == torch.float32 for d in dt) for _, dt in arithmetic), arithmetic
    assert out["pred_masks"].isfinite().all()


def test_channels_last_model_gives_the_same_outputs():
    """``model.to(memory_format=torch.channels_last)`` (the CPU benchmark's fast variant) is exact up to fp32."""
    cfg = get_preset("synthetic/kmax_tiny").model
    torch.manual_seed(0)
    model = build_kmax(cfg).eval()
    randomise_batch_norms(model)
    images = torch.rand(1, 3, 129, 129) * 255
    with torch.no_grad():
        want = model(images)
        model.to(memory_format=torch.channels_last)
        got = model(images.contiguous(memory_format=torch.channels_last))
    for key in ("pred_logits", "pred_masks", "pixel_feature"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4 * want[key].abs().max().item())
