"""K-Net model structure: parameter counts and shapes of the original code (knet.md §13),
backbone freezing, the kernel head's and update stage's rules, converter tables."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kmax_deeplab.checkpoints.mmdet import mmdet_to_ours, ours_to_mmdet
from kmax_deeplab.checkpoints.table import CheckpointMismatchError
from kmax_deeplab.modeling.backbones.resnet import resnet_mmdet
from kmax_deeplab.modeling.knet import KernelInitHead, KernelUpdateHead, KernelUpdator, build_knet
from kmax_deeplab.modeling.knet.neck import sine_positional_encoding


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.slow
def test_parameter_counts_equal_original():
    """Counts of ZwwWayne/K-Net @5e50ee5 built on CPU (knet.md §13)."""
    pan = build_knet(task="panoptic")
    assert _count(pan) == 37_536_852
    assert _count(pan.backbone) == 23_508_032
    assert _count(pan.neck) == 3_344_384
    assert _count(pan.kernel_head) == 4_456_325
    assert [_count(s) for s in pan.stages] == [2_076_037] * 3
    assert len(pan.state_dict()) == 502  # the released checkpoint's 502 keys
    inst = build_knet(task="instance")
    assert _count(inst) == 37_482_368
    assert [_count(s) for s in inst.stages] == [2_062_416] * 3
    assert _count(resnet_mmdet(101)) == 42_500_160  # torchvision resnet101 without fc


@pytest.mark.slow
def test_shapes_for_a_480x640_photo_at_test_size():
    """§13: resized to 800x1067, padded to 800x1088 -> stride-8 maps 100x136 (narrow widths, same geometry)."""
    model = build_knet(task="panoptic", num_stages=1, backbone="resnet_tiny", channels=32, num_groups=4,
                       ffn_channels=32).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 800, 1067) * 255)
    assert out["canvas_size"] == (800, 1088)
    assert out["pred_logits"].shape == (1, 153, 133)
    assert out["pred_masks"].shape == (1, 153, 200, 272)  # stride 4 = stride 8 ×2
    assert out["semantic_logits"].shape == (1, 133, 200, 272)
    assert out["init_masks"].shape == (1, 100, 200, 272)


def test_backbone_freezing_matches_mmdet():
    """frozen_stages=1: stem + res2 frozen and in eval; norm_eval: every BN stays in eval."""
    net = resnet_mmdet(50)
    net.train()
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.res2.parameters())
    assert all(p.requires_grad for p in net.res3.parameters())
    assert not any(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    bn = net.res3[0].conv1.norm
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    x = torch.randn(1, 3, 64, 64)
    before = bn.running_mean.clone()
    net(x)
    assert torch.equal(bn.running_mean, before)  # statistics never updated
    free = resnet_mmdet(50, frozen_stages=-1, norm_eval=False).train()
    assert all(p.requires_grad for p in free.parameters())
    assert free.res3[0].conv1.norm.training
    with pytest.raises(ValueError, match="frozen_stages"):
        resnet_mmdet(50, frozen_stages=5)


def test_kernel_head_rules():
    """Binary-mask *sum* of features added to the init kernels; stuff kernels = conv_seg rows."""
    torch.manual_seed(0)
    head = KernelInitHead(5, num_kernels=3, num_stuff=2, in_channels=32, channels=32, num_groups=4).eval()
    assert head.init_kernels.weight.std().item() == pytest.approx(1.0, abs=0.25)  # std 1.0 init
    assert head.conv_seg.bias[0].item() == pytest.approx(-4.59512, abs=1e-4)
    feats = [torch.randn(1, 32, 16 // 2 ** i, 16 // 2 ** i) for i in range(4)]
    out = head(feats)
    assert out.kernels.shape == (1, 5, 32) and out.masks.shape == (1, 5, 8, 8)  # stride 8 of a 32x32 input
    binary = (out.thing_masks.sigmoid() > 0.5).float()
    expected = head.init_kernels.weight.flatten(1) + torch.einsum("bnhw,bchw->bnc", binary, out.x_feats)[0]
    torch.testing.assert_close(out.kernels[0, :3], expected)
    torch.testing.assert_close(out.kernels[0, 3:], head.conv_seg.weight[3:].flatten(1))
    torch.testing.assert_close(out.masks[:, 3:], out.semantic_logits[:, 3:])
    # gradient flows into the init_kernels weight through the cloned kernels
    out.kernels.sum().backward()
    assert head.init_kernels.weight.grad is not None


def test_updator_halves_and_biases():
    """[gate | output] halves, and every Linear with a bias (the nn.Linear(in, out, 1) quirk)."""
    torch.manual_seed(0)
    up = KernelUpdator(8, 8, 8)
    for name in ("dynamic_layer", "input_layer", "input_gate", "update_gate", "fc_layer"):
        assert getattr(up, name).bias is not None, name
    f, k = torch.randn(4, 8), torch.randn(4, 8)
    p, q = up.dynamic_layer(f), up.input_layer(k)
    gate = q[:, :8] * p[:, :8]
    g_k = up.input_norm_in(up.input_gate(gate)).sigmoid()
    g_f = up.norm_in(up.update_gate(gate)).sigmoid()
    mix = g_f * up.norm_out(p[:, 8:]) + g_k * up.input_norm_out(q[:, 8:])
    torch.testing.assert_close(up(f, k), torch.relu(up.fc_norm(up.fc_layer(mix))))


def test_update_stage_gathers_with_binary_masks():
    torch.manual_seed(0)
    stage = KernelUpdateHead(6, channels=16, num_heads=2, ffn_channels=32).eval()
    x, kernels = torch.randn(1, 16, 4, 5), torch.randn(1, 3, 16)
    masks = torch.randn(1, 3, 4, 5)
    seen = {}
    stage.updator.register_forward_hook(lambda m, inp, out: seen.update(feats=inp[0]))
    out = stage(x, kernels, masks)
    fx = stage.feat_transform(x)
    expected = torch.einsum("bnhw,bchw->bnc", (masks.sigmoid() > 0.5).float(), fx)
    torch.testing.assert_close(seen["feats"], expected)
    assert out.cls_logits.shape == (1, 3, 6) and out.mask_logits.shape == (1, 3, 4, 5)
    assert torch.allclose(stage.fc_cls.bias, torch.full((6,), -4.59512), atol=1e-4)
    with pytest.raises(ValueError, match="gather"):
        KernelUpdateHead(6, gather="mean")


def test_sine_encoding_values():
    """DETR formula at one position, by hand: y channels first, sin/cos interleaved."""
    import math

    pos = sine_positional_encoding(1, 2, 3, num_feats=4)
    assert pos.shape == (1, 8, 2, 3)
    y = 2 / (2 + 1e-6) * 2 * math.pi  # row 2 of 2, normalised
    x = 1 / (3 + 1e-6) * 2 * math.pi  # column 1 of 3
    dim_t = [10000 ** (2 * (i // 2) / 4) for i in range(4)]
    expect = [math.sin(y / dim_t[0]), math.cos(y / dim_t[1]), math.sin(y / dim_t[2]), math.cos(y / dim_t[3]),
              math.sin(x / dim_t[0]), math.cos(x / dim_t[1]), math.sin(x / dim_t[2]), math.cos(x / dim_t[3])]
    torch.testing.assert_close(pos[0, :, 1, 0], torch.tensor(expect), rtol=1e-5, atol=1e-6)


def test_model_pads_normalised_image_with_zeros():
    model = build_knet(task="instance", backbone="resnet_tiny", channels=32, num_groups=4, num_kernels=4,
                       ffn_channels=32, num_stages=1)
    images = torch.full((2, 3, 40, 50), 128.0)
    x = model.normalize(images, image_sizes=[(40, 50), (30, 20)])
    assert x.shape == (2, 3, 64, 64)
    assert x[:, :, 40:].abs().sum() == 0 and x[:, :, :, 50:].abs().sum() == 0
    assert x[1, :, 30:].abs().sum() == 0 and x[1, :, :, 20:].abs().sum() == 0
    torch.testing.assert_close(x[0, 0, 0, 0], torch.tensor((128.0 - 123.675) / 58.395))
    with pytest.raises(ValueError, match="image_sizes"):
        model.normalize(images, image_sizes=[(41, 50), (30, 20)])
    with pytest.raises(ValueError, match="float images"):
        model(images.to(torch.uint8))


def test_mmdet_converter_refuses_other_task():
    """Panoptic (133-class) weights into an instance (80-class) model: one error naming both shapes."""
    small = dict(backbone="resnet_tiny", channels=32, num_groups=4, num_kernels=4, ffn_channels=32)
    pan = build_knet(task="panoptic", **small)
    inst = build_knet(task="instance", **small)
    mm = ours_to_mmdet(pan.state_dict())
    assert "rpn_head.conv_seg.weight" in mm and "roi_head.mask_head.2.fc_cls.bias" in mm
    with pytest.raises(CheckpointMismatchError) as err:
        mmdet_to_ours(mm, inst)
    assert "\n" not in str(err.value)
    assert "panoptic K-Net with 133 classes, but the model is an instance K-Net with 80 classes" in str(err.value)
    with pytest.raises(CheckpointMismatchError, match="not an mmdet K-Net checkpoint"):
        mmdet_to_ours({"backbone.conv1.weight": mm["backbone.conv1.weight"]}, inst)
    del mm["roi_head.mask_head.0.ffn_norm.weight"]
    with pytest.raises(CheckpointMismatchError, match="stages.0.ffn_norm.weight"):
        mmdet_to_ours(mm, pan)


def test_imagenet_init_from_torchvision_resnet(tmp_path):
    """``kmax convert --from imagenet``'s loader fills the K-Net backbone from a torchvision R-50 file
    (torchvision names = mmdet's ``backbone.`` names without the prefix, plus ``fc``)."""
    from kmax_deeplab.checkpoints.imagenet import load_imagenet_backbone

    torch.manual_seed(0)
    src = resnet_mmdet(50)
    tv = {k[len("backbone."):]: torch.from_numpy(v) for k, v in ours_to_mmdet(
        {f"backbone.{k}": v for k, v in src.state_dict().items()}).items()}
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(tv, tmp_path / "resnet50-0676ba61.pth")
    dst = resnet_mmdet(50)
    load_imagenet_backbone(tmp_path / "resnet50-0676ba61.pth", dst)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
