"""MaX-DeepLab-S/-L model: parameter counts, geometry and layer rules against deeplab2.

Oracle: the numbers read off deeplab2 @64bc1c1 run on CPU (spec ``max_deeplab.md`` §10)
and deeplab2's code (``axial_block_groups.py``, ``axial_resnet.py``, ``dual_path_transformer.py``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kmax_deeplab.modeling.backbones.axial_resnet import AxialBlock
from kmax_deeplab.modeling.layers.dual_path_transformer import DualPathTransformerLayer
from kmax_deeplab.modeling.max_deeplab import build_max_deeplab


def _cfg(variant="s", size=(65, 65), **kw):
    return SimpleNamespace(variant=variant, image_size=size, num_classes=133, **kw)


def _meta(variant, size=(641, 641)):
    with torch.device("meta"):  # shapes only
        return build_max_deeplab(_cfg(variant, size))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant,size,total,semantic,encoder,all_vars", [
    ("s", (641, 641), 77_756_942, 15_856_742, 61_726_624, 77_990_256),
    ("l", (1025, 1025), 450_871_278, 107_398, 450_523_232, 451_622_800),
])
def test_parameter_counts_equal_deeplab2(variant, size, total, semantic, encoder, all_vars):
    model = _meta(variant, size)
    assert _count(model) == total
    assert _count(model.semantic_head) == semantic
    assert _count(model) - _count(model.semantic_head) == total - semantic  # S: 61,900,200 (paper 61.9 M)
    assert _count(model.encoder) == encoder
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert _count(model) + stats == all_vars


def test_parameter_count_does_not_depend_on_the_canvas():
    assert _count(_meta("s", (65, 97))) == _count(_meta("s", (641, 641)))


def test_canvas_beyond_the_axial_query_block_is_refused():
    # 2065 -> stride 16: 130 > 129, which deeplab2's global axial attention cannot cover
    with pytest.raises(ValueError, match="longer than 129"):
        _meta("s", (2065, 641))
    _meta("s", (2049, 641))  # 129: still global


def test_drop_path_schedule_and_block_kinds_of_max_s():
    model = _meta("s")
    enc = model.encoder

    def keep(block):
        return 1.0 - block.drop_path.drop_prob

    assert [keep(getattr(enc.stage2, f"block{i}")) for i in (1, 2, 3)] == [1.0] * 3
    assert not getattr(enc.stage4, "block1").axial and enc.stage4.block1.stride == 2
    assert [getattr(enc.stage4, f"block{i}").axial for i in range(1, 7)] == [False] + [True] * 5
    assert [keep(getattr(enc.stage4, f"block{i}")) for i in range(1, 7)] == [1.0] + [pytest.approx(0.85)] * 5
    assert [keep(getattr(enc.stage5, f"block{i}")) for i in (1, 2, 3)] == [pytest.approx(0.85), 0.8, 0.8]
    assert keep(enc.stage5_extra.block1) == pytest.approx(0.8)
    # a DPT after every stage-5 block and after the extra block, with the block's keep prob
    for group, n in ((enc.stage5, 3), (enc.stage5_extra, 1)):
        for i in range(1, n + 1):
            dpt = getattr(group, f"block{i}_transformer")
            assert isinstance(dpt, DualPathTransformerLayer)
            assert 1.0 - dpt.drop_path_pixel.drop_prob == keep(getattr(group, f"block{i}"))
    assert not any(isinstance(m, DualPathTransformerLayer) for m in enc.stage4.modules())
    # S: no dilation anywhere outside the ASPP (spec §10.7)
    dilations = {m.dilation for m in enc.modules() if isinstance(m, nn.Conv2d)}
    assert dilations == {(1, 1)}
    aspp = model.semantic_head._aspp
    assert [aspp._aspp_conv1.conv.dilation, aspp._aspp_conv2.conv.dilation, aspp._aspp_conv3.conv.dilation] == \
        [(6, 6), (12, 12), (18, 18)]
    assert tuple(enc.memory_feature.shape) == (1, 128, 256)


def test_bn_constants_and_zero_gamma_init():
    model = build_max_deeplab(_cfg("s", (33, 33)))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert {(m.eps, m.momentum) for m in bns} == {(1e-3, 0.01)}
    enc = model.encoder
    for block in (enc.stage2.block1, enc.stage4.block2, enc.stage5.block3):
        assert torch.count_nonzero(block.conv3_bn.norm.weight) == 0
    dpt = enc.stage5.block1_transformer
    for m in (dpt._memory_conv3_bn, dpt._memory_ffn_conv2_bn, dpt._pixel_conv3_bn):
        assert torch.count_nonzero(m.norm.weight) == 0
    assert torch.all(model.predictor._pixel_space_mask_batch_norm.weight == 0.1)


def test_axial_block_is_relu_first_and_adds_shortcut_without_relu():
    torch.manual_seed(0)
    block = AxialBlock(8, [4, 4, 8]).eval()
    x = torch.randn(1, 8, 5, 5)
    nn.init.zeros_(block.conv3_bn.norm.bias)  # branch == 0 (gamma 0) -> output is relu(x)
    assert torch.equal(block(x), torch.relu(x))


@pytest.mark.slow
def test_max_s_forward_shapes_and_gradients():
    torch.manual_seed(0)
    model = build_max_deeplab(_cfg("s", (65, 49)))
    images = torch.rand(2, 3, 65, 49) * 255
    out = model.train()(images)
    assert tuple(out["pred_logits"].shape) == (2, 128, 134)
    assert tuple(out["pred_masks"].shape) == (2, 128, 17, 13)
    assert tuple(out["pixel_feature"].shape) == (2, 128, 17, 13)
    assert tuple(out["semantic_logits"].shape) == (2, 134, 17, 13)
    assert out["aux_outputs"] == []
    loss = sum(v.float().square().mean() for k, v in out.items() if torch.is_tensor(v))
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert "semantic_logits" not in out
    assert torch.isfinite(out["pred_masks"]).all()
    assert torch.allclose(out["pixel_feature"].norm(dim=1), torch.ones(2, 17, 13), atol=1e-5)
    with pytest.raises(ValueError, match="65x49"):
        model(torch.rand(1, 3, 65, 65))
