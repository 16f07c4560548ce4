"""``model.reference`` selects the whole network (issue 9, item 1), and everything that
builds a deeplab2 model says ``reference: deeplab2``.

Oracles: deeplab2's code (``model/pixel_decoder/kmax.py`` builds every decoder stage as
``BlockGroup(original_resnet_input_stride=32, output_stride=16)``, hence atrous rate 2;
``pixel_encoder/axial_resnet.py`` / ``convnext.py`` activate ``res3``/``res2`` with ReLU /
GELU) and bytedance's (no dilation, raw features). The numerical check against deeplab2
itself is ``test_parity_deeplab2.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from kmax_deeplab.checkpoints import zoo
from kmax_deeplab.checkpoints.native import load_native, save_native, upgrade_deeplab2_reference
from kmax_deeplab.config import PRESETS, get_preset
from kmax_deeplab.modeling.kmax.family import postprocess_variant
from kmax_deeplab.modeling.kmax import build_kmax, reference_behaviour
from kmax_deeplab.modeling.kmax.pixel_decoder import DecoderBlock, deeplab2_decoder_atrous_rate


def _bottleneck_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [b._conv2_bn_act.conv for b in model.modules()
            if isinstance(b, DecoderBlock) and b.block_type == "bottleneck"]


def test_deeplab2_atrous_rule():
    assert deeplab2_decoder_atrous_rate() == 2  # 32 // 16, every decoder stage
    assert deeplab2_decoder_atrous_rate(16, 16) == 1 and deeplab2_decoder_atrous_rate(32, 8) == 4


@pytest.mark.parametrize("preset", ["synthetic/kmax_tiny", "cityscapes/kmax_r50"])
@pytest.mark.parametrize("reference, rate", [("bytedance", 1), ("deeplab2", 2)])
def test_bottleneck_dilation_in_every_stage(preset, reference, rate):
    """Stride-8 and stride-4 stages and, for Cityscapes, the fifth (stem) stage."""
    cfg = get_preset(preset).model
    cfg.reference, cfg.image_size = reference, (65, 129)
    with torch.device("meta"):
        model = build_kmax(cfg)
    convs = _bottleneck_convs(model)
    assert len(convs) == (3 if cfg.use_stem_skip else 2)
    for conv in convs:
        assert conv.kernel_size == (3, 3) and conv.dilation == (rate, rate) and conv.padding == (rate, rate)
    axial = [b for b in model.modules() if isinstance(b, DecoderBlock) and b.block_type == "axial"]
    assert axial and not any(hasattr(b, "_conv2_bn_act") for b in axial)


def test_dilated_bottleneck_computes_an_atrous_conv():
    torch.manual_seed(0)
    block = DecoderBlock(8, (8, 8, 8), "bottleneck", shape=(9, 9), dilation=2).eval()
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        h = block._conv1_bn_act(nn.functional.gelu(x))
        w = block._conv2_bn_act.conv.weight
        expected = nn.functional.conv2d(h, w, padding=2, dilation=2)
        assert torch.allclose(block._conv2_bn_act.conv(h), expected)
    with pytest.raises(ValueError, match="dilation"):
        DecoderBlock(8, (8, 8, 8), "bottleneck", shape=(9, 9), dilation=0)


@pytest.mark.parametrize("backbone, reference, act", [
    ("resnet50_deeplab2", "deeplab2", "relu"), ("resnet50", "deeplab2", "relu"),
    ("convnext_tiny", "deeplab2", "gelu"), ("convnext_tiny", "bytedance", "none"),
    ("resnet50", "bytedance", "none")])
def test_reference_behaviour_table(backbone, reference, act):
    b = reference_behaviour(reference, backbone)
    assert b.low_level_activation == act
    assert b.bottleneck_dilation == (2 if reference == "deeplab2" else 1)
    assert b.align_corners == ("always" if reference == "deeplab2" else "bytedance")
    assert b.postprocess_variant == reference


def test_reference_errors_name_the_option():
    with pytest.raises(ValueError, match="model config: reference"):
        reference_behaviour("tf", "resnet50")
    with pytest.raises(ValueError, match="activation of backbone"):
        reference_behaviour("deeplab2", "swin_tiny")


def test_aux_semantic_inputs_are_activated_as_deeplab2_does():
    cfg = get_preset("synthetic/kmax_tiny").model
    cfg.reference = "deeplab2"
    torch.manual_seed(0)
    model = build_kmax(cfg)
    head = model.predictor._auxiliary_semantic_predictor.eval()
    assert head.low_level_activation == "relu"  # resnet_tiny: a ResNet
    ch = {f.name: f.channels for f in model.backbone.feature_info}
    res5, res3, res2 = (torch.randn(1, ch[n], s, s) for n, s in (("res5", 5), ("res3", 17), ("res2", 33)))
    with torch.no_grad():
        out = head(res5, res3, res2)
        head.low_level_activation = "none"
        assert torch.equal(out, head(res5, res3.relu(), res2.relu()))
        assert not torch.allclose(out, head(res5, res3, res2))


def test_every_deeplab2_preset_and_tf_zoo_entry_builds_deeplab2s_network():
    deeplab2 = [n for n in PRESETS if n.endswith("_deeplab2")]
    assert {"coco/kmax_r50_deeplab2", "coco/kmax_convnext_tiny_deeplab2", "cityscapes/kmax_r50_deeplab2",
            "ade20k/kmax_convnext_large_1281_deeplab2"} <= set(deeplab2)
    for name in PRESETS:
        cfg = get_preset(name)
        if cfg.model.meta_architecture != "kmax":
            continue  # other families have no reference switch
        want = "deeplab2" if name in deeplab2 else "bytedance"
        assert cfg.model.reference == want and postprocess_variant(cfg) == want, name
    for name, entry in zoo.ZOO.items():
        cfg = get_preset(entry.preset)
        if cfg.model.meta_architecture != "kmax":
            continue
        assert cfg.model.reference == entry.source or entry.source == "bytedance", name
        if entry.source == "deeplab2":
            assert entry.preset.endswith("_deeplab2"), name


def test_postprocess_variant_auto_follows_the_reference():
    cfg = get_preset("coco/kmax_convnext_tiny")
    assert cfg.postprocess.variant == "auto" and postprocess_variant(cfg) == "bytedance"
    cfg.model.reference = "deeplab2"
    assert postprocess_variant(cfg) == "deeplab2"
    cfg.postprocess.variant = "bytedance"  # an explicit choice wins
    assert postprocess_variant(cfg) == "bytedance"


def _old_conversion(tmp_path, metadata):
    """A native folder as ``kmax convert --from deeplab2`` wrote it before the fix."""
    cfg = get_preset("coco/kmax_convnext_tiny")
    cfg.postprocess.variant = "bytedance"  # the default written out then
    return save_native(tmp_path / "old", {"w": torch.zeros(2)}, cfg, metadata)


def test_pre_fix_deeplab2_conversion_is_upgraded_with_a_warning(tmp_path):
    folder = _old_conversion(tmp_path, {"source": "deeplab2", "original": "ckpt-150000"})
    with pytest.warns(UserWarning, match="converted from deeplab2 before"):
        cfg, state = load_native(folder)
    assert cfg.model.reference == "deeplab2" and postprocess_variant(cfg) == "deeplab2"
    assert set(state) == {"w"}


@pytest.mark.parametrize("metadata", [
    {"source": "deeplab2", "reference": "deeplab2"},   # converted after the fix
    {"source": "detectron2", "original": "x.pth"},     # a bytedance checkpoint
    {"source": "kmax train"},                          # trained here
])
def test_other_checkpoints_are_left_alone(tmp_path, metadata):
    folder = _old_conversion(tmp_path, metadata)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg, _ = load_native(folder)
    assert cfg.model.reference == "bytedance"
    assert not upgrade_deeplab2_reference(cfg, metadata)
