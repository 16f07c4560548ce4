"""kMaX head (pixel decoder + transformer decoder + heads) against the bytedance layout and
plain reference computations (spec §1.2-§1.5, §5.1, §7)."""

from __future__ import annotations

import math
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from torch import nn

from kmax_deeplab.config import get_preset
from kmax_deeplab.modeling.kmax import (
    KMaXPixelDecoder,
    KMaXPredictor,
    build_kmax,
    kmeans_assignment,
    kmeans_update,
    void_logit_offset,
)
from kmax_deeplab.modeling.kmax.pixel_decoder import DecoderBlock

Spec = namedtuple("Spec", "name channels stride")
NAMES = ("stem", "res2", "res3", "res4", "res5")


class StandInBackbone(nn.Module):
    """Strided 3x3 convs from the image: right channels/strides, differentiable, no checkpoint keys."""

    def __init__(self, channels, strides=(4, 4, 8, 16, 32)):
        super().__init__()
        self.feature_info = [Spec(n, c, s) for n, c, s in zip(NAMES, channels, strides)]
        self.convs = nn.ModuleList(nn.Conv2d(3, c, 3, stride=s, padding=1) for c, s in zip(channels, strides))

    def forward(self, x):
        return {spec.name: conv(x) for spec, conv in zip(self.feature_info, self.convs)}


R50 = (64, 256, 512, 1024, 2048)
CONVNEXT = {"tiny": (96, 96, 192, 384, 768), "base": (128, 128, 256, 512, 1024),
            "large": (192, 192, 384, 768, 1536)}


def _bd_head_layout(path: Path) -> dict[str, list[int]]:
    """``sem_seg_head.*`` rows of a BD TSV, renamed to our prefixes."""
    out = {}
    for line in path.read_text().splitlines():
        key, shape, _ = line.split("\t")
        if key.startswith("sem_seg_head."):
            key = key[len("sem_seg_head."):].replace("_predcitor", "_predictor")
            out[key] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    return out


def _head_layout(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.")}


@pytest.mark.parametrize("preset,channels,tsv", [
    ("coco/kmax_r50", R50, "bytedance_kmax_r50_coco.keys.tsv"),
    ("coco/kmax_convnext_tiny", CONVNEXT["tiny"], "bytedance_kmax_convnext_tiny_coco.keys.tsv"),
])
def test_head_state_dict_equals_bytedance_layout(checkpoint_layouts, preset, channels, tsv):
    with torch.device("meta"):  # shapes only: skips the (slow) random init
        model = build_kmax(get_preset(preset).model, backbone=StandInBackbone(channels))
    ref = _bd_head_layout(checkpoint_layouts / tsv)
    mine = _head_layout(model)
    assert sorted(set(ref) - set(mine)) == []
    assert sorted(set(mine) - set(ref)) == []
    assert {k: v for k, v in mine.items() if ref[k] != v} == {}
    assert sum(k.endswith("num_batches_tracked") for k in mine) == sum(
        k.endswith("num_batches_tracked") for k in ref)
    # Our extra buffers (pixel mean/std, void offset, rpe indices) stay out of the state dict.
    assert not any("pixel_mean" in k or "void_offset" in k or k.endswith(".index") for k in mine)


@pytest.mark.parametrize("channels,expected", [
    (R50, 21.2), (CONVNEXT["tiny"], 21.2), (CONVNEXT["base"], 22.0), (CONVNEXT["large"], 23.7)])
def test_pixel_decoder_parameter_count(channels, expected):
    cfg = get_preset("coco/kmax_r50").model
    names = ("res5", "res4", "res3", "res2")
    with torch.device("meta"):
        dec = KMaXPixelDecoder(names, channels[:0:-1], (32, 16, 8, 4), image_size=cfg.image_size,
                               filters=cfg.decoder_filters, num_blocks=cfg.decoder_num_blocks,
                               block_types=cfg.decoder_block_types)
    assert abs(sum(p.numel() for p in dec.parameters()) / 1e6 - expected) < 0.1


def test_r50_head_parameter_counts_match_spec_table():
    # Spec §1 table: total 56.6 M / 72.4 M with R50 (23.5 M); the head alone is thus
    # 33.1 M and the aux semantic decoder 15.8 M, each within the table's rounding.
    with torch.device("meta"):
        model = build_kmax(get_preset("coco/kmax_r50").model, backbone=StandInBackbone(R50))
    head = sum(p.numel() for n, p in model.named_parameters()
               if not n.startswith("backbone.") and "_auxiliary_semantic_predictor" not in n) / 1e6
    aux = sum(p.numel() for n, p in model.named_parameters() if "_auxiliary_semantic_predictor" in n) / 1e6
    assert abs(head - (56.6 - 23.5)) < 0.15
    assert abs(head + aux - (72.4 - 23.5)) < 0.15


def test_cityscapes_stem_stage_and_head_only_semantic_branch():
    cfg = get_preset("cityscapes/kmax_r50").model
    with torch.device("meta"):
        model = build_kmax(cfg, backbone=StandInBackbone(R50))
    sd = model.state_dict()
    # bytedance sorts the decoder inputs by stride, stably over (stem, res2, ..): its stride-4 R50
    # stem comes before res2 (kmax_pixel_decoder.py; its own code fails to load our weights otherwise).
    assert list(sd["pixel_decoder._in_norms.3.weight"].shape) == [64]
    assert list(sd["pixel_decoder._in_norms.4.weight"].shape) == [256]
    assert "pixel_decoder._resized_fuses.2._conv_bn_high.conv.weight" not in sd  # 64-ch stem into 64 filters
    assert list(sd["pixel_decoder._resized_fuses.3._conv_bn_high.conv.weight"].shape) == [32, 256, 1, 1]
    assert list(sd["pixel_decoder._stages.4._blocks.0._conv3_bn.conv.weight"].shape) == [128, 32, 1, 1]
    assert list(sd["pixel_decoder._resized_fuses.3._conv_bn_low.conv.weight"].shape) == [32, 256, 1, 1]
    assert list(sd["predictor._cluster_centers.weight"].shape) == [256, 256]
    head = {k[len("predictor._auxiliary_semantic_predictor."):]: list(v.shape) for k, v in sd.items()
            if k.startswith("predictor._auxiliary_semantic_predictor.")}
    assert head["0.conv.weight"] == [2048, 1, 5, 5]
    assert head["1.conv.weight"] == [256, 2048, 1, 1]
    assert head["2.conv.weight"] == [19, 256, 1, 1] and head["2.conv.bias"] == [19]
    assert list(sd["predictor._predictor._transformer_class_head.conv.weight"].shape) == [20, 256, 1]


def test_kmeans_update_equals_per_cluster_loop():
    torch.manual_seed(0)
    b, n, d, h, w = 2, 5, 3, 4, 6
    # Logits built so that the argmax over *pixels* differs from the argmax over *queries*.
    mask_logits = torch.randn(b, n, h, w, requires_grad=True)
    pixel_value = torch.randn(b, d, h * w)
    assignment = kmeans_assignment(mask_logits)
    assert not assignment.requires_grad and assignment.dtype == torch.float32
    assert torch.equal(assignment.sum(1), torch.ones(b, h * w))
    got = kmeans_update(assignment, pixel_value)
    ref = torch.zeros(b, d, n)
    winner = mask_logits.detach().flatten(2).argmax(1)  # [B, hw]: one query per pixel
    for i in range(b):
        for c in range(n):
            for p in range(h * w):
                if winner[i, p] == c:
                    ref[i, :, c] += pixel_value[i, :, p]
    torch.testing.assert_close(got, ref)
    # fp32 even for half inputs.
    assert kmeans_update(assignment, pixel_value.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("training", [True, False])
def test_void_logit_offset_added_in_train_and_eval(training):
    c = 133
    assert math.isclose(void_logit_offset(133), 7.0876, abs_tol=1e-4)
    assert math.isclose(void_logit_offset(19), 5.1417, abs_tol=1e-4)
    assert math.isclose(void_logit_offset(150), 7.2079, abs_tol=1e-4)
    pred = KMaXPredictor(8, c, query_dim=16, hidden_dim=16, pixel_feature_dim=4).train(training)
    nn.init.zeros_(pred._transformer_class_head.conv.weight)
    nn.init.constant_(pred._transformer_class_head.conv.bias, 0.25)
    emb = torch.randn(2, 16, 3)
    out = pred(emb, emb, torch.randn(2, 8, 5, 5))
    expected = torch.full((2, 3, c + 1), 0.25)
    expected[..., -1] += math.log(c * 9.0)
    torch.testing.assert_close(out["class_logits"], expected)
    assert out["mask_logits"].shape == (2, 3, 5, 5)
    torch.testing.assert_close(out["pixel_feature"].norm(dim=1), torch.ones(2, 5, 5))


def test_predictor_inits():
    pred = KMaXPredictor(8, 7, query_dim=16, hidden_dim=16, pixel_feature_dim=4)
    assert torch.all(pred._pixel_space_mask_batch_norm.weight == 0.1)
    assert pred._pixel_space_head_last_convbn.conv.bias is not None
    assert torch.all(pred._transformer_class_head.conv.bias == 0)
    assert pred._transformer_class_head.conv.weight.std() < 0.02


def test_gamma_zero_on_last_bn_of_every_residual_branch():
    model = build_kmax(get_preset("synthetic/kmax_tiny").model,
                       backbone=StandInBackbone((8, 16, 24, 32, 48)))
    zero_suffixes = ("_conv3_bn.norm.weight", "_query_conv3_bn.norm.weight",
                     "_query_ffn_conv2_bn.norm.weight", "_kmeans_query_conv3_bn.norm.weight")
    seen = 0
    for name, p in model.named_parameters():
        if name.endswith(zero_suffixes):
            assert torch.all(p == 0), name
            seen += 1
        elif name.endswith("_pixel_space_mask_batch_norm.weight"):
            assert torch.all(p == 0.1), name
        elif name.endswith("norm.weight") and "_in_norms" not in name:
            assert torch.all(p == 1), name
    # 4 decoder stages x 1 block + 3 layers x 3 branches.
    assert seen == 4 + 3 * 3


@torch.no_grad()
def test_decoder_block_with_zero_gamma_is_activated_shortcut():
    torch.manual_seed(0)
    for block_type in ("axial", "bottleneck"):
        same = DecoderBlock(16, (8, 4, 16), block_type, shape=(5, 5), num_heads=2).eval()
        x = torch.randn(2, 16, 5, 5)
        torch.testing.assert_close(same(x), nn.functional.gelu(x))
        proj = DecoderBlock(8, (8, 4, 16), block_type, shape=(5, 5), num_heads=2).eval()
        x = torch.randn(2, 8, 5, 5)
        torch.testing.assert_close(proj(x), proj._shortcut(nn.functional.gelu(x)))


def _tiny_model():
    cfg = get_preset("synthetic/kmax_tiny").model
    torch.manual_seed(0)
    return cfg, build_kmax(cfg, backbone=StandInBackbone((8, 16, 24, 32, 48)))


def test_eval_mode_has_no_semantic_logits_and_validates_input():
    _, model = _tiny_model()
    model.eval()
    with torch.no_grad():
        out = model(torch.full((1, 3, 129, 129), 127.5))
    assert "semantic_logits" not in out
    assert set(out) == {"pred_logits", "pred_masks", "pixel_feature", "aux_outputs"}
    assert model.num_classes == 7
    assert not any(k in model.state_dict() for k in ("pixel_mean", "pixel_std"))
    with pytest.raises(ValueError, match="image_size 129x129"):
        model(torch.zeros(1, 3, 161, 129))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(1, 1, 129, 129))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 3, 129, 129, dtype=torch.uint8))


def test_normalisation_is_x_over_127_5_minus_1():
    _, model = _tiny_model()
    seen = {}
    model.backbone.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    images = torch.rand(1, 3, 129, 129) * 255
    model.eval()
    with torch.no_grad():
        model(images)
    torch.testing.assert_close(seen["x"], images / 127.5 - 1)


def test_build_kmax_rejects_bad_configs():
    cfg = get_preset("synthetic/kmax_tiny").model
    backbone = StandInBackbone((8, 16, 24, 32, 48))
    for field, value, match in [("image_size", (128, 129), "32k\\+1"), ("aux_semantic", "x", "aux_semantic"),
                                ("reference", "tf", "reference"), ("decoder_filters", (64, 32, 16), "equal lengths")]:
        bad = get_preset("synthetic/kmax_tiny").model
        setattr(bad, field, value)
        with pytest.raises(ValueError, match=match):
            build_kmax(bad, backbone=backbone)
    assert cfg.image_size == (129, 129)


def test_sync_batchnorm_conversion_keeps_keys():
    from kmax_deeplab.modeling.kmax import convert_sync_batchnorm

    _, model = _tiny_model()
    keys = list(model.state_dict())
    synced = convert_sync_batchnorm(model)
    assert list(synced.state_dict()) == keys
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) for m in synced.modules())
    cfg = get_preset("synthetic/kmax_tiny").model
    cfg.norm = "SyncBN"
    direct = build_kmax(cfg, backbone=StandInBackbone((8, 16, 24, 32, 48)))
    assert list(direct.state_dict()) == keys


@torch.no_grad()
def test_layer_self_attention_reads_pre_update_query_space():
    from kmax_deeplab.modeling.kmax import KMaXTransformerLayer

    torch.manual_seed(0)
    layer = KMaXTransformerLayer(12, 5, hidden_dim=16, key_dim=8, value_dim=16, ffn_dim=32, num_heads=2,
                                 pixel_feature_dim=8).eval()
    nn.init.constant_(layer._kmeans_query_conv3_bn.norm.weight, 5.0)  # a large k-means update
    seen = {}
    layer._query_qkv_conv_bn.register_forward_pre_hook(lambda m, a: seen.setdefault("qkv_in", a[0]))
    query = torch.randn(2, 16, 4)
    pixels = torch.randn(2, 12, 5, 5)
    new_query, pred = layer(pixels, query)
    torch.testing.assert_close(seen["qkv_in"], layer._query_conv1_bn_act(query))
    # The k-means step alone, recomputed from the layer predictor's mask logits.
    pixel_space = layer._pixel_conv1_bn_act(nn.functional.gelu(pixels))
    value = layer._pixel_v_conv_bn(pixel_space).flatten(2)
    update = kmeans_update(kmeans_assignment(pred["mask_logits"]), value)
    after_kmeans = query + layer._kmeans_query_conv3_bn(layer._kmeans_query_batch_norm_retrieved_value(update))
    qkv = layer._query_qkv_conv_bn(layer._query_conv1_bn_act(query))
    q, k, v = torch.split(qkv, [8, 8, 16], dim=1)
    attn = layer._query_self_attention(q.reshape(2, 2, 4, 4), k.reshape(2, 2, 4, 4), v.reshape(2, 2, 8, 4))
    x = nn.functional.gelu(after_kmeans + layer._query_conv3_bn(attn))
    x = nn.functional.gelu(x + layer._query_ffn_conv2_bn(layer._query_ffn_conv1_bn_act(x)))
    torch.testing.assert_close(new_query, x)


def test_deeplab2_reference_activates_low_level_features_with_the_backbone_activation():
    # deeplab2 feeds its backbone's activated res3/res2: GELU for ConvNeXt, ReLU for its ResNet.
    for backbone, reference, expected in [("convnext_tiny", "deeplab2", "gelu"), ("convnext_tiny", "bytedance", "none"),
                                          ("resnet50", "deeplab2", "relu"), ("resnet50", "bytedance", "none")]:
        cfg = get_preset("coco/kmax_r50").model
        cfg.backbone, cfg.reference = backbone, reference
        channels = CONVNEXT["tiny"] if backbone.startswith("convnext") else R50
        with torch.device("meta"):
            model = build_kmax(cfg, backbone=StandInBackbone(channels))
        assert model.predictor._auxiliary_semantic_predictor.low_level_activation == expected
