"""Backbones: geometry, parameter counts, checkpoint key layouts and block semantics (spec §1.1).

Oracles: the spec's parameter table (§1 "backbone" column), the reference state-dict layouts in
``specs/checkpoint_layouts`` (bytedance keys; deeplab2 TF variables through the §5.2 rules), the
32k+1 sizes of §1 and hand-written functional versions of the blocks described in §1.1.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kmax_deeplab.modeling.backbones import (
    BACKBONE_NAMES,
    Backbone,
    ConvNeXt,
    FeatureSpec,
    FrozenBatchNorm2d,
    build_backbone,
    freeze_batch_norms,
)

EXPECTED_CHANNELS = {
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet50_deeplab2": (64, 256, 512, 1024, 2048),
    "resnet_tiny": (16, 32, 64, 128, 256),
    "convnext_tiny": (96, 96, 192, 384, 768),
    "convnext_small": (96, 96, 192, 384, 768),
    "convnext_base": (128, 128, 256, 512, 1024),
    "convnext_large": (192, 192, 384, 768, 1536),
}
EXPECTED_STEM_STRIDE = {"resnet50_deeplab2": 2}


@functools.lru_cache(maxsize=None)
def _built_eval(name: str) -> Backbone:
    """One real, initialised backbone per name in eval mode, shared by read-only tests."""
    torch.manual_seed(0)
    return build_backbone(name).eval()


def _meta_build(name: str, **kwargs) -> Backbone:
    """Build without allocating or initialising weights (shapes and counts only)."""
    with torch.device("meta"):
        return build_backbone(name, **kwargs)


def _read_tsv(path: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in path.read_text().splitlines():
        name, shape = line.split("\t")[:2]
        if name.startswith(prefix):
            rows[name] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return rows


# ---------------------------------------------------------------- geometry and the contract


def test_feature_spec_is_frozen_and_ceil_divides():
    spec = FeatureSpec("res3", 512, 8)
    with pytest.raises(AttributeError):
        spec.channels = 3  # type: ignore[misc]
    assert spec.output_size(1281, 65) == (161, 9)
    assert spec.output_size(64, 97) == (8, 13)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_feature_info_channels_and_strides(name):
    backbone = _meta_build(name)
    info = backbone.feature_info
    assert [s.name for s in info] == ["stem", "res2", "res3", "res4", "res5"]
    assert tuple(s.channels for s in info) == EXPECTED_CHANNELS[name]
    assert tuple(s.stride for s in info) == (EXPECTED_STEM_STRIDE.get(name, 4), 4, 8, 16, 32)


_SLOW_CPU = ("convnext_small", "convnext_base", "convnext_large")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_CPU else n for n in BACKBONE_NAMES])
def test_65x97_gives_promised_sizes(name):
    backbone = _built_eval(name)
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 65, 97))
    assert list(out) == [s.name for s in backbone.feature_info]
    for spec in backbone.feature_info:
        # ceil-divided sizes: 65 -> 33/17/9/5/3, 97 -> 49/25/13/7/4
        expected = (1, spec.channels, math.ceil(65 / spec.stride), math.ceil(97 / spec.stride))
        assert tuple(out[spec.name].shape) == expected, spec
        assert torch.isfinite(out[spec.name]).all()


@pytest.mark.parametrize("name", ["resnet50", "resnet50_deeplab2"])
def test_resnet50_1281_shapes_on_meta_device(name):
    with torch.device("meta"):
        backbone = build_backbone(name)
        out = backbone(torch.empty(1, 3, 1281, 1281))
    shapes = {k: tuple(v.shape[1:]) for k, v in out.items()}
    assert shapes["res2"] == (256, 321, 321)
    assert shapes["res3"] == (512, 161, 161)
    assert shapes["res4"] == (1024, 81, 81)
    assert shapes["res5"] == (2048, 41, 41)
    assert shapes["stem"] == ((64, 321, 321) if name == "resnet50" else (64, 641, 641))


@pytest.mark.slow
def test_resnet50_1281_real_forward():
    backbone = build_backbone("resnet50").eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 1281, 1281))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "stem": (1, 64, 321, 321), "res2": (1, 256, 321, 321), "res3": (1, 512, 161, 161),
        "res4": (1, 1024, 81, 81), "res5": (1, 2048, 41, 41)}
    assert all(torch.isfinite(v).all() for v in out.values())


def test_convnext_padding_geometry_at_1281():
    # Width does not change the geometry, so a narrow ConvNeXt checks 1281 -> 1284 -> 321 ...
    backbone = ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64)).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 1281, 1281))
    assert [tuple(out[k].shape[-2:]) for k in ("stem", "res2", "res3", "res4", "res5")] == [
        (321, 321), (321, 321), (161, 161), (81, 81), (41, 41)]


def test_convnext_tiny_97x129():
    with torch.no_grad():
        out = _built_eval("convnext_tiny")(torch.randn(1, 3, 97, 129))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "stem": (1, 96, 25, 33), "res2": (1, 96, 25, 33), "res3": (1, 192, 13, 17),
        "res4": (1, 384, 7, 9), "res5": (1, 768, 4, 5)}


def test_convnext_pads_zeros_top_left_1_bottom_right_2():
    # An all-ones 4x4 stem kernel with zero bias sums each 4x4 window of the padded input.
    backbone = ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64)).eval()
    stem_conv = backbone.downsample_layers[0][0]
    x = torch.arange(1, 1 + 9 * 9, dtype=torch.float32).reshape(1, 1, 9, 9).repeat(1, 3, 1, 1)
    with torch.no_grad():
        stem_conv.weight.fill_(1.0)
        stem_conv.bias.zero_()
        got = stem_conv(F.pad(x, (1, 2, 1, 2)))
    padded = torch.zeros(12, 12)
    padded[1:10, 1:10] = x[0, 0]
    expected = 3 * padded.reshape(3, 4, 3, 4).sum(dim=(1, 3))
    assert torch.equal(got[0, 0], expected)
    # and the module really uses that padding: stem output equals LN(conv(pad(x)))
    with torch.no_grad():
        ref = backbone.downsample_layers[0][1](got)
        out = backbone(x)["stem"]
    assert torch.allclose(out, ref)


# ---------------------------------------------------------------- parameter counts (spec §1)


@pytest.mark.parametrize("name,millions", [
    ("resnet50", 23.5), ("resnet50_deeplab2", 23.5), ("convnext_tiny", 27.8),
    ("convnext_small", 49.5), ("convnext_base", 87.6), ("convnext_large", 196.2)])
def test_parameter_counts_match_spec(name, millions):
    count = sum(p.numel() for p in _meta_build(name).parameters())
    assert abs(count / 1e6 - millions) <= 0.1, count


# ---------------------------------------------------------------- checkpoint layouts (spec §5)


@pytest.mark.parametrize("name,tsv", [
    ("resnet50", "bytedance_kmax_r50_coco.keys.tsv"),
    ("resnet50_deeplab2", "bytedance_kmax_r50_coco.keys.tsv"),
    ("convnext_tiny", "bytedance_kmax_convnext_tiny_coco.keys.tsv")])
def test_state_dict_equals_bytedance_backbone_keys(checkpoint_layouts, name, tsv):
    reference = {}
    for line in (checkpoint_layouts / tsv).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        if key.startswith("backbone."):
            reference[key[len("backbone."):]] = (
                tuple(int(v) for v in re.findall(r"\d+", shape)), dtype)
    state = _meta_build(name).state_dict()
    ours = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()}
    assert set(ours) == set(reference)
    assert ours == reference
    assert len(ours) == (318 if name.startswith("resnet") else 178)


_TF_LEAF = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias",
            "moving_mean": "running_mean", "moving_variance": "running_var"}
_TF_CONVNEXT_SUB = {"depthwise_conv": "dwconv", "norm": "norm", "pointwise_conv1": "pwconv1",
                    "pointwise_conv2": "pwconv2"}


def _tf_encoder_to_ours(name: str) -> str:
    """Spec §5.2 name rules for ``encoder/*`` (TF blocks 1-based -> 0-based)."""
    name = name.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE").removeprefix("encoder/")
    if m := re.fullmatch(r"_stem/(_conv|_batch_norm)/(\w+)", name):
        return "stem.conv1." + ("" if m[1] == "_conv" else "norm.") + _TF_LEAF[m[2]]
    if m := re.fullmatch(r"_stage(\d)/_block(\d+)/_(conv1|conv2|conv3|shortcut)\w*/"
                         r"(_conv|_batch_norm)/(\w+)", name):
        norm = "" if m[4] == "_conv" else "norm."
        return f"res{m[1]}.{int(m[2]) - 1}.{m[3]}.{norm}{_TF_LEAF[m[5]]}"
    if m := re.fullmatch(r"downsample_layers/(\d)/layer_with_weights-(\d)/(\w+)", name):
        return f"downsample_layers.{m[1]}.{m[2]}.{_TF_LEAF[m[3]]}"
    if m := re.fullmatch(r"stages/(\d)/layer_with_weights-(\d+)/layer_scale", name):
        return f"stages.{m[1]}.{m[2]}.gamma"
    if m := re.fullmatch(r"stages/(\d)/layer_with_weights-(\d+)/(\w+)/(\w+)", name):
        return f"stages.{m[1]}.{m[2]}.{_TF_CONVNEXT_SUB[m[3]]}.{_TF_LEAF[m[4]]}"
    raise KeyError(name)


def _tf_shape_to_ours(shape: tuple[int, ...], ours: str) -> tuple[int, ...]:
    """Spec §5.2 tensor rules: [kh,kw,in,out] -> [out,in,kh,kw]; Dense [in,out] -> [out,in];
    layer scale [1,1,1,C] -> [C]."""
    if ours.endswith("gamma"):
        return shape[-1:]
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape


@pytest.mark.parametrize("name,tsv", [
    ("resnet50_deeplab2", "deeplab2_kmax_r50_coco.variables.tsv"),
    ("convnext_tiny", "deeplab2_kmax_convnext_tiny_coco.variables.tsv")])
def test_deeplab2_encoder_variables_map_onto_our_keys(checkpoint_layouts, name, tsv):
    tf_rows = _read_tsv(checkpoint_layouts / tsv, "encoder/")
    state = _meta_build(name).state_dict()
    mapped = {}
    for tf_name, tf_shape in tf_rows.items():
        ours = _tf_encoder_to_ours(tf_name)
        assert ours in state, (tf_name, ours)
        assert ours not in mapped, f"two TF variables map to {ours}"
        mapped[ours] = _tf_shape_to_ours(tf_shape, ours)
        assert mapped[ours] == tuple(state[ours].shape), tf_name
    # every tensor of ours is produced, except the BN step counters TF does not store
    missing = {k for k in state if k not in mapped}
    assert missing == {k for k in state if k.endswith("num_batches_tracked")}
    assert len(tf_rows) == (265 if name.startswith("resnet") else 178)


# ---------------------------------------------------------------- block semantics


def _bn(x, norm):
    if isinstance(norm, nn.Identity):
        return x
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                        False, 0.0, norm.eps)


def _conv_bn(x, conv, stride=1, padding=0):
    return _bn(F.conv2d(x, conv.weight, None, stride, padding), conv.norm)


def _reference_resnet(state_owner, x, *, deeplab2):
    """Functional ResNet from the spec text (§1.1), using the module only as a weight store."""
    m = state_owner
    x = _conv_bn(x, m.stem.conv1, 2, 3)
    if deeplab2:
        feats = {"stem": x}  # un-activated stride-2 stem, no max-pool
    else:
        x = F.max_pool2d(F.relu(x), 3, 2, 1)
        feats = {"stem": x}
    for s in (2, 3, 4, 5):
        for b, block in enumerate(getattr(m, f"res{s}")):
            stride = 2 if b == 0 and (s > 2 or deeplab2) else 1
            inp = F.relu(x) if deeplab2 else x
            y = F.relu(_conv_bn(inp, block.conv1))
            y = F.relu(_conv_bn(y, block.conv2, stride, 1))
            y = _conv_bn(y, block.conv3)
            short = _conv_bn(inp, block.shortcut, stride) if b == 0 else inp
            x = y + short if deeplab2 else F.relu(y + short)
        feats[f"res{s}"] = x
    return feats


def _randomise(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("norm.weight", "norm.bias", "running_mean")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2 + (1.0 if "weight" in name
                                                                      else 0.0))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)


@pytest.mark.parametrize("layout", ["bytedance", "deeplab2"])
def test_resnet_matches_functional_reference(layout):
    from kmax_deeplab.modeling.backbones.resnet import resnet_tiny

    model = resnet_tiny(layout=layout).eval()
    _randomise(model, 1)
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        got = model(x)
        ref = _reference_resnet(model, x, deeplab2=layout == "deeplab2")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4)
    if layout == "bytedance":
        assert all((got[k] >= 0).all() for k in got)  # activated endpoints
    else:
        assert all((got[k] < 0).any() for k in got)  # un-activated endpoints


def test_deeplab2_resnet_differs_from_bytedance_with_same_weights():
    bd = _meta_build("resnet50").to_empty(device="cpu").eval()
    tf = _meta_build("resnet50_deeplab2").to_empty(device="cpu").eval()
    _randomise(bd, 2)
    tf.load_state_dict(bd.state_dict(), strict=True)  # identical key layout
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        a, b = bd(x), tf(x)
    assert tuple(a["stem"].shape) == (1, 64, 17, 17) and tuple(b["stem"].shape) == (1, 64, 33, 33)
    for k in ("res2", "res3", "res4", "res5"):
        assert a[k].shape == b[k].shape
        assert not torch.allclose(a[k], b[k], atol=1e-3)


def test_deeplab2_last_bn_gamma_starts_at_zero_bytedance_does_not():
    tf = _built_eval("resnet50_deeplab2")
    bd = _built_eval("resnet50")
    for s in (2, 3, 4, 5):
        for block in getattr(tf, f"res{s}"):
            assert torch.count_nonzero(block.conv3.norm.weight) == 0
        for block in getattr(bd, f"res{s}"):
            assert torch.all(block.conv3.norm.weight == 1)


def test_batch_norm_constants():
    backbone = build_backbone("resnet_tiny")
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 1 + 4 * 4  # stem + (conv1..3 + shortcut) x 4 stages
    assert {(m.eps, m.momentum) for m in norms} == {(1e-3, 0.01)}


def _reference_convnext_block(block, x):
    y = F.conv2d(x, block.dwconv.weight, block.dwconv.bias, padding=3, groups=x.shape[1])
    y = y.permute(0, 2, 3, 1)
    y = F.layer_norm(y, y.shape[-1:], block.norm.weight, block.norm.bias, 1e-6)
    y = F.linear(F.gelu(F.linear(y, block.pwconv1.weight, block.pwconv1.bias)),
                 block.pwconv2.weight, block.pwconv2.bias)
    return x + (block.gamma * y).permute(0, 3, 1, 2)


def test_convnext_block_matches_functional_reference():
    backbone = ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64)).eval()
    _randomise(backbone, 3)
    block = backbone.stages[1][0]
    x = torch.randn(2, 16, 9, 13)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_convnext_block(block, x))


# ---------------------------------------------------------------- drop path, layer scale, modes


def test_convnext_drop_path_rises_linearly_and_layer_scale_init():
    backbone = _meta_build("convnext_tiny", drop_path=0.3)
    blocks = [blk for stage in backbone.stages for blk in stage]
    rates = [blk.drop_path.drop_prob for blk in blocks]
    assert len(rates) == 18
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    steps = [b - a for a, b in zip(rates, rates[1:])]
    assert steps == pytest.approx([0.3 / 17] * 17, abs=1e-7)
    real = _built_eval("convnext_tiny")
    gammas = torch.cat([blk.gamma for stage in real.stages for blk in stage])
    assert torch.all(gammas == torch.tensor(1e-6))
    assert all(not isinstance(m, nn.BatchNorm2d) for m in real.modules())


def test_convnext_eval_is_deterministic_train_drops_paths():
    torch.manual_seed(0)
    backbone = ConvNeXt((2, 2, 2, 2), (8, 16, 32, 64), drop_path=0.5)
    for blk in (b for stage in backbone.stages for b in stage):
        blk.gamma.data.fill_(1.0)  # make branches visible
    x = torch.randn(4, 3, 33, 33)
    backbone.eval()
    with torch.no_grad():
        e1, e2 = backbone(x)["res5"], backbone(x)["res5"]
    assert torch.equal(e1, e2)
    backbone.train()
    with torch.no_grad():
        t1, t2 = backbone(x)["res5"], backbone(x)["res5"]
    assert not torch.allclose(t1, t2)


def test_resnet_train_mode_uses_batch_statistics():
    torch.manual_seed(0)
    backbone = build_backbone("resnet_tiny")
    x = torch.randn(2, 3, 33, 33) * 3 + 1
    backbone.eval()
    with torch.no_grad():
        evaluated = backbone(x)["res5"]
    backbone.train()
    with torch.no_grad():
        trained = backbone(x)["res5"]
    assert not torch.allclose(evaluated, trained)
    assert int(backbone.stem.conv1.norm.num_batches_tracked) == 1
    assert not torch.equal(backbone.stem.conv1.norm.running_mean, torch.zeros(16))


@pytest.mark.parametrize("name", ["resnet_tiny", "resnet50_deeplab2_tiny", "convnext_narrow"])
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    if name == "resnet50_deeplab2_tiny":
        from kmax_deeplab.modeling.backbones.resnet import resnet_tiny
        backbone = resnet_tiny(layout="deeplab2")
    elif name == "convnext_narrow":
        backbone = ConvNeXt((1, 2, 1, 1), (8, 16, 32, 64), drop_path=0.1)
    else:
        backbone = build_backbone(name)
    backbone.train()
    out = backbone(torch.randn(2, 3, 33, 49))
    sum(v.float().pow(2).mean() for v in out.values()).backward()
    for pname, p in backbone.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if name != "resnet50_deeplab2_tiny":  # TF's zero-γ branches give exact zeros
            assert p.grad.abs().sum() > 0, pname


# ---------------------------------------------------------------- norms and errors


def test_frozen_batch_norm_equals_batch_norm_in_eval():
    bn = nn.BatchNorm2d(5, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    bn.eval()
    frozen = FrozenBatchNorm2d.from_batch_norm(bn)
    x = torch.randn(2, 5, 7, 3)
    torch.testing.assert_close(frozen(x), bn(x))
    assert list(frozen.parameters()) == []
    # a TF-converted state dict has no step counter; both classes accept it
    state = {k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    fresh = FrozenBatchNorm2d(5)
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh(x), bn(x))


def test_frozen_bn_backbone_same_keys_and_outputs():
    bn_model = build_backbone("resnet_tiny").eval()
    _randomise(bn_model, 4)
    frozen_model = build_backbone("resnet_tiny", norm="FrozenBN")
    frozen_model.load_state_dict(bn_model.state_dict(), strict=True)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        torch.testing.assert_close(frozen_model(x)["res5"], bn_model(x)["res5"])
        converted = freeze_batch_norms(bn_model)
        torch.testing.assert_close(converted(x)["res5"], frozen_model(x)["res5"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert sum(p.numel() for p in frozen_model.parameters()) == sum(
        p.numel() for n, p in bn_model.named_parameters() if "norm" not in n)


def test_norm_variants():
    sync = build_backbone("resnet_tiny", norm="SyncBN")
    assert isinstance(sync.res3[0].conv2.norm, nn.SyncBatchNorm)
    assert sync.res3[0].conv2.norm.eps == 1e-3
    plain = build_backbone("resnet_tiny", norm="none")
    assert not any("norm" in k for k in plain.state_dict())
    with torch.no_grad():
        assert plain.eval()(torch.randn(1, 3, 33, 33))["res5"].shape == (1, 256, 2, 2)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="no stochastic depth"):
        build_backbone("resnet50", drop_path=0.1)
    with pytest.raises(ValueError, match="unknown backbone norm 'GN'"):
        build_backbone("resnet_tiny", norm="GN")
    with pytest.raises(ValueError, match=r"drop_path must be in \[0, 1\)"):
        build_backbone("convnext_tiny", drop_path=1.0)
    backbone = build_backbone("resnet_tiny")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backbone(torch.zeros(3, 33, 33))
    with pytest.raises(ValueError, match="floating-point"):
        backbone(torch.zeros(1, 3, 33, 33, dtype=torch.uint8))
    with pytest.raises(KeyError, match="res6"):
        backbone.feature_spec("res6")


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_backbones_run_under_cpu_autocast(norm):
    # The AMP path: convs in bf16, LayerNorms in fp32 islands; outputs stay finite and close.
    # (The output dtype is whatever type promotion gives, e.g. fp32 after ConvNeXt's fp32 γ.)
    models = [build_backbone("resnet_tiny", norm=norm).eval(),
              ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64)).eval()]
    x = torch.randn(1, 3, 33, 33)
    for model in models:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out["res5"].dtype in (torch.bfloat16, torch.float32)
        assert all(torch.isfinite(v.float()).all() for v in out.values())
        with torch.no_grad():
            ref = model(x)["res5"]
        torch.testing.assert_close(out["res5"].float(), ref, rtol=0.1, atol=0.1)
