"""The semantic K-Net family (issue 13): the family row, the model's contract and its size.

Oracles: parameter counts of the original code (ZwwWayne/K-Net @5e50ee5 ``configs/seg/knet/``,
mmseg 0.30.0 ``EncoderDecoder`` built on CPU: UPerNet and FCN are the issue's numbers, PSPNet and
DeepLabv3 measured the same way); the original's two-half update of 512-d kernels
(``knet/kernel_updator.py``: ``reshape(-1, in_channels)``) written out by hand; mmcv
``rescale_size`` for the test geometry; the contract with ``engine/semantic_inference.py``
(``sem_seg`` ``[B, C, H, W]`` at the input size in eval mode).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kmax_deeplab.config import load_config
from kmax_deeplab.modeling.families import FAMILIES, family_of, task_of
from kmax_deeplab.modeling.knet.kernel_update import KernelUpdateHead

TINY = ["model.backbone=resnet_tiny", "model.head_channels=32", "model.updator_dim=16", "model.ffn_dim=32",
        "model.num_heads=2", "model.aux_channels=16", "model.num_classes=5", "model.num_queries=5",
        "model.norm=BN"]

#: (with auxiliary head, without): the original code's ``sum(p.numel() for p in model.parameters())``.
ORIGINAL_COUNTS = {"upernet": (45_660_300, 43_261_942), "fcn": (62_810_508, 60_412_150),
                   "pspnet": (62_288_268, 59_889_910), "deeplabv3": (81_425_804, 79_027_446)}


def _tiny(head: str = "fcn", *extra: str):
    cfg = load_config(f"ade20k/knet_r50_d8_{head}_512", TINY + list(extra))
    torch.manual_seed(0)
    return cfg, family_of(cfg).build_model(cfg)


@pytest.mark.parametrize("head", list(ORIGINAL_COUNTS))
def test_parameter_counts_equal_the_original(head):
    from kmax_deeplab.modeling.knet_semantic import build_knet_semantic

    model = build_knet_semantic(decode_head=head)
    total = sum(p.numel() for p in model.parameters())
    aux = sum(p.numel() for p in model.auxiliary_head.parameters())
    assert (total, total - aux) == ORIGINAL_COUNTS[head]
    no_aux = build_knet_semantic(decode_head=head, auxiliary_head=False)
    assert no_aux.auxiliary_head is None and sum(p.numel() for p in no_aux.parameters()) == total - aux
    # FCN / PSPNet / DeepLabv3 kernels are 512-d, updated as two 256-d halves; UPerNet's 256-d
    assert [s.channels // s.updator_channels for s in model.stages] == [1 if head == "upernet" else 2] * 3
    assert all(not hasattr(s, "fc_cls") and s.gather == "softmax" for s in model.stages)


def test_family_row_and_presets():
    fam = FAMILIES["knet_semantic"]
    assert fam.tasks == ("semantic",) and fam.inference_keys == ("sem_seg",)
    assert FAMILIES["kmax"].tasks == ("panoptic",) and FAMILIES["knet"].tasks == ("panoptic", "instance")
    for head in ORIGINAL_COUNTS:
        cfg = load_config(f"ade20k/knet_r50_d8_{head}_512")
        fam.check_config(cfg)
        assert task_of(cfg) == "semantic" and cfg.model.decode_head == head
        assert cfg.model.num_classes == cfg.model.num_queries == 150
        s = cfg.solver
        assert (s.base_lr, s.weight_decay, s.clip_grad_norm, s.warmup_iters, s.warmup_factor, s.lr_steps,
                s.max_iters, s.batch_size) == (1e-4, 5e-4, 1.0, 1000, 0.001, (60_000, 72_000), 80_000, 16)
    assert task_of(load_config("synthetic/kmax_tiny")) == "panoptic"


@pytest.mark.parametrize("override, match", [
    ("model.task=panoptic", "model.task must be 'semantic'"),
    ("model.decode_head=segformer", "model.decode_head must be one of"),
    ("model.num_queries=7", r"model.num_queries \(7\) must equal model.num_classes"),
    ("model.updator_dim=24", r"model.updator_dim \(24\) must divide"),
    ("model.backbone=resnet50", "model.backbone must be one of"),
])
def test_bad_config_named(override, match):
    cfg = load_config("ade20k/knet_r50_d8_fcn_512", [override])
    with pytest.raises(ValueError, match=match):
        family_of(cfg).check_config(cfg)


def test_postprocess_refuses_panoptic_use():
    cfg = load_config("ade20k/knet_r50_d8_upernet_512")
    with pytest.raises(ValueError, match="kmax predict --task semantic"):
        family_of(cfg).postprocess({}, cfg=cfg, is_thing=[], train_id_to_category_id=[], canvas_size=(8, 8),
                                   valid_size=(8, 8), output_size=(8, 8))


def test_geometry_is_mmseg_test_resize():
    """mmcv ``rescale_size((w, h), (2048, 512))``: s = min(2048 / long, 512 / short), int(x s + 0.5)."""
    cfg = load_config("ade20k/knet_r50_d8_upernet_512")
    geo = family_of(cfg).input_geometry(cfg)
    assert geo.test_size(480, 640) == (512, 683)  # s = 512/480
    assert geo.test_size(512, 4000) == (262, 2048)  # s = 2048/4000: int(262.144 + .5)
    assert geo.test_size(1000, 1000) == (512, 512)
    assert geo.pixel_mean == (123.675, 116.28, 103.53) and geo.pixel_std == (58.395, 57.12, 57.375)
    imgs = [np.full((48, 64, 3), 200, np.uint8), np.full((64, 48, 3), 100, np.uint8)]
    batch, valid = geo.preprocess(imgs)
    assert valid == [(512, 683), (683, 512)] and batch.shape == (2, 3, 683, 683)
    assert torch.all(batch[0, :, :512, :683] == 200)
    assert torch.allclose(batch[0, :, 512:, :], torch.tensor(geo.pixel_mean).view(3, 1, 1))  # 0 once normalised


def test_kernel_halves_are_updated_independently():
    """A 2U-d kernel through a U-d updator = the updator on each U-d half (the original's
    ``update_feature.reshape(-1, in_channels)``), concatenated."""
    torch.manual_seed(0)
    stage = KernelUpdateHead(3, channels=8, num_heads=2, ffn_channels=16, gather="softmax", with_cls=False,
                             updator_channels=4)
    feats, k = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    whole = stage.updator(feats.reshape(2, 3, 2, 4), k.reshape(2, 3, 2, 4)).reshape(2, 3, 8)
    halves = torch.cat([stage.updator(feats[..., :4], k[..., :4]), stage.updator(feats[..., 4:], k[..., 4:])], -1)
    torch.testing.assert_close(whole, halves)
    x, masks = torch.randn(2, 8, 5, 6), torch.randn(2, 3, 5, 6)
    out = stage(x, k, masks)
    assert out.cls_logits is None and out.mask_logits.shape == (2, 3, 5, 6) and out.kernels.shape == (2, 3, 8)
    with pytest.raises(ValueError, match=r"updator_channels \(3\) must divide channels \(8\)"):
        KernelUpdateHead(3, channels=8, updator_channels=3)


@pytest.mark.slow
@pytest.mark.parametrize("head", list(ORIGINAL_COUNTS))
def test_forward_contract(head):
    """Eval: ``{"sem_seg": float32 [B, C, H, W]}`` at the input size = the last stage resized
    (mmseg ``encode_decode``); the auxiliary head does not run. Training: S+1 logits + aux."""
    cfg, model = _tiny(head)
    images = torch.rand(2, 3, 37, 50) * 255
    model.eval()
    calls = []
    model.auxiliary_head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model(images)
        x = (images - model.pixel_mean) / model.pixel_std
        stages = model.stage_logits(model.backbone(x))
    assert set(out) == {"sem_seg"} and out["sem_seg"].dtype == torch.float32
    assert out["sem_seg"].shape == (2, 5, 37, 50) and not calls
    expected = torch.nn.functional.interpolate(stages[-1], size=(37, 50), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["sem_seg"], expected)
    assert len(stages) == 4 and not torch.allclose(stages[0], stages[-1])
    model.train()
    out = model(images)
    assert len(out["stage_logits"]) == 4 and out["aux_logits"].shape[:2] == (2, 5)
    losses = family_of(cfg).build_criterion(cfg)(out, [{"sem_seg": torch.randint(0, 5, (37, 50))}] * 2)
    assert sorted(losses) == ["aux.loss_ce", "loss_ce.s0", "loss_ce.s1", "loss_ce.s2", "loss_ce.s3"]
    sum(losses.values()).backward()
    assert model.decode_head.conv_seg.weight.grad.abs().sum() > 0  # the initial kernels learn
