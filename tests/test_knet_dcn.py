"""K-Net R-101-DCN: the deformable ResNet, its mmdet keys and the original code's outputs.

The original config (``knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco*.py``) asks for
``dcn=dict(type='DCN', ...)``, which mmcv 1.7.2 registers as ``DeformConv2dPack`` (v1, offsets
only: ``conv_offset`` has 2·9 = 18 output channels), not the modulated ``DCNv2``. The fixture in
``tests/data/parity/knet_dcn/`` holds the ORIGINAL code's outputs for ``seeded_knet_dcn``'s
weights (offsets of about a pixel), with mmcv's missing compiled op replaced by a direct loop of
its kernel; ``tools/knet_dcn_parity.py`` regenerates it. Tolerance fp32, 1e-4 relative
(measured ≤ 3.7e-6).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kmax_deeplab.checkpoints.mmdet import load_mmdet_checkpoint, mmdet_to_ours, ours_to_mmdet, save_mmdet
from kmax_deeplab.checkpoints.table import CheckpointMismatchError
from kmax_deeplab.modeling.backbones.resnet import DeformConv2dNorm, ResNet, resnet_mmdet
from kmax_deeplab.modeling.knet import build_knet
from kmax_deeplab.modeling.knet.postprocess import knet_panoptic_inference
from kmax_deeplab.modeling.layers.deform_conv import DeformConv2dPack

from knet_test_utils import checksums, seeded_knet_dcn, subsample

DCN_DIR = Path(__file__).resolve().parent / "data" / "parity" / "knet_dcn"
META = json.loads((DCN_DIR / "meta.json").read_text())
RTOL = 1e-4


def test_parameter_counts_equal_the_original():
    """The original code, built on CPU from its R-101-DCN configs (``meta.json``, recorded by
    tools/knet_dcn_parity.py): panoptic 57,815,152, instance 57,760,668, backbone 43,786,332."""
    from kmax_deeplab.checkpoints.zoo import ZOO
    from kmax_deeplab.config import get_preset
    from kmax_deeplab.modeling.families import family_of

    ref = META["reference_parameters"]
    assert ref["panoptic"]["total"] == 57_815_152 and ref["instance"]["total"] == 57_760_668
    assert ref["panoptic"]["conv2"] == "DeformConv2dPack"  # mmcv's 'DCN' (v1), not 'DCNv2'
    for task, suffix in (("panoptic", ""), ("instance", "_instance")):
        cfg = get_preset(f"coco/knet_r101_dcn_fpn_ms3x{suffix}")
        assert (cfg.model.dcn, cfg.model.task, cfg.model.backbone) == ("DCN", task, "resnet101")
        assert ZOO[f"knet_r101_dcn_fpn_ms3x_coco_{task}"].preset == cfg.name
        # the recipe is R-101 ms-3x's (knet_s3_r101_dcn-c3-c5_* only change the backbone)
        plain = get_preset(f"coco/knet_r101_fpn_ms3x{suffix}")
        assert (cfg.solver, cfg.data, cfg.loss, cfg.postprocess) == (plain.solver, plain.data, plain.loss,
                                                                     plain.postprocess)
        assert {k: v for k, v in vars(cfg.model).items() if k != "dcn"} == {
            k: v for k, v in vars(plain.model).items() if k != "dcn"} and plain.model.dcn == "none"
        model = family_of(cfg).build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) == ref[task]["total"], task
        assert sum(p.numel() for p in model.backbone.parameters()) == ref[task]["backbone"] == 43_786_332
        assert len(model.state_dict()) == ref[task]["keys"] == 868


@pytest.mark.slow
def test_resnet_stage_with_dcn_and_zero_offsets():
    """c3-c5 conv2 deformable (strided first blocks too: fallback_on_stride=False), c2 plain;
    zero-initialised offsets make the DCN backbone the plain one with the same weights."""
    torch.manual_seed(0)
    plain = resnet_mmdet(101, frozen_stages=-1, norm_eval=False)
    dcn = resnet_mmdet(101, frozen_stages=-1, norm_eval=False, dcn="DCN")
    assert type(dcn.res2[0].conv2).__name__ == "Conv2dNorm"
    kinds = {n: m for n, m in dcn.named_modules() if isinstance(m, DeformConv2dNorm)}
    assert len(kinds) == 4 + 23 + 3 and "res3.0.conv2" in kinds and kinds["res3.0.conv2"].stride == (2, 2)
    assert not any(m.modulated for m in kinds.values())
    missing, unexpected = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".conv_offset." in k for k in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = plain.eval()(x), dcn.eval()(x)
    for k in a:  # fp32 summation order only (the untrained res4/res5 reach ~5e4)
        assert float((b[k] - a[k]).abs().max()) <= 1e-5 * float(a[k].abs().max()), k
    v2 = ResNet((1, 1, 1, 1), stem_channels=8, bottleneck_channels=(4, 8, 16, 32), dcn="DCNv2",
                stage_with_dcn=(True, False, False, True))
    c2 = v2.res2[0].conv2
    assert isinstance(c2, DeformConv2dPack) and c2.modulated and c2.conv_offset.out_channels == 27
    assert not isinstance(v2.res3[0].conv2, DeformConv2dPack) and v2.res5[0].conv2.modulated
    # zero offsets, sigmoid(0) = 0.5: the modulated conv2 is half the plain conv before its norm
    y = torch.randn(1, 4, 8, 8)
    ref = c2.norm(0.5 * torch.nn.functional.conv2d(y, c2.weight, None, 1, 1))
    torch.testing.assert_close(c2(y), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="dcn='DCNv3'"):
        ResNet((1, 1, 1, 1), dcn="DCNv3")
    with pytest.raises(ValueError, match="layout='bytedance'"):
        ResNet((1, 1, 1, 1), layout="deeplab2", dcn="DCN")


def test_mmdet_keys_both_directions_strict(tmp_path):
    model = build_knet(task="instance", backbone="resnet101", dcn="DCN")
    ours = model.state_dict()
    mm = ours_to_mmdet(ours)
    assert mm["backbone.layer2.0.conv2.conv_offset.weight"].shape == (18, 128, 3, 3)
    assert mm["backbone.layer4.2.conv2.conv_offset.bias"].shape == (18,)
    assert mm["backbone.layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert "backbone.layer1.0.conv2.conv_offset.weight" not in mm
    assert sum(".conv_offset." in k for k in mm) == 60 and len(mm) == 868
    back = mmdet_to_ours(mm, model)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], v) for k, v in ours.items())
    # a plain R-101 checkpoint is refused by the DCN model (and the other way round), naming the keys
    plain = {k: v for k, v in mm.items() if ".conv_offset." not in k}
    with pytest.raises(CheckpointMismatchError, match="conv_offset"):
        mmdet_to_ours(plain, model)
    with pytest.raises(CheckpointMismatchError, match="conv_offset"):
        mmdet_to_ours(mm, build_knet(task="instance", backbone="resnet101"))
    pth = save_mmdet(ours, tmp_path / "dcn.pth")
    assert load_mmdet_checkpoint(pth, model).keys() == ours.keys()


def test_imagenet_init_leaves_offsets_at_zero(tmp_path):
    """A torchvision R-101 file (no offset branches) loads strictly into the DCN backbone."""
    from kmax_deeplab.checkpoints.imagenet import load_imagenet_backbone

    torch.manual_seed(1)
    src = resnet_mmdet(101)
    tv = {k[len("backbone."):]: torch.as_tensor(v) for k, v in ours_to_mmdet(
        {f"backbone.{k}": v for k, v in src.state_dict().items()}).items()}
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(tv, tmp_path / "resnet101.pth")
    dcn = resnet_mmdet(101, dcn="DCN")
    load_imagenet_backbone(tmp_path / "resnet101.pth", dcn)
    got = dcn.state_dict()
    for k, v in src.state_dict().items():
        assert torch.equal(got[k], v), k
    assert all(not got[k].any() for k in got if ".conv_offset." in k)


@pytest.fixture(scope="module")
def dcn_case():
    gold = dict(np.load(DCN_DIR / "panoptic.npz"))
    model = seeded_knet_dcn("panoptic")
    with torch.no_grad():
        x = torch.from_numpy(gold["image"].copy()).permute(2, 0, 1)[None].float()
        feats = model.backbone(model.normalize(x))
        out = model(x)
    return gold, feats, out


def _check(name: str, ours: np.ndarray, gold: dict) -> None:
    assert list(ours.shape) == list(gold[f"{name}.shape"]), name
    ref_val, ref_sum = gold[f"{name}.val"], gold[f"{name}.sum"]
    np.testing.assert_allclose(subsample(ours)[1], ref_val, rtol=0, atol=RTOL * np.abs(ref_val).max(), err_msg=name)
    mine = checksums(ours)
    assert abs(mine[0] - ref_sum[0]) <= RTOL * ref_sum[1], name
    np.testing.assert_allclose(mine[1:], ref_sum[1:], rtol=RTOL, err_msg=name)


@pytest.mark.slow
def test_outputs_match_original_r101_dcn(dcn_case):
    gold, feats, out = dcn_case
    assert META["reference_dcn_calls"] == 30 and min(META["reference_mean_abs_offset"]) > 0.3  # offsets really moved
    for i in range(2, 6):
        _check(f"res{i}", feats[f"res{i}"].numpy(), gold)
    _check("head_masks", out["init_all_masks"].numpy(), gold)
    _check("head_semantic", out["semantic_logits"].numpy(), gold)
    for s, o in enumerate(out["aux_outputs"] + [out]):
        _check(f"s{s}_cls", o["pred_logits"].numpy(), gold)
        _check(f"s{s}_masks", o["pred_masks"].numpy(), gold)
    size = tuple(META["image_size"])
    ids, segs = knet_panoptic_inference(out["pred_logits"][0], out["pred_masks"][0], num_thing_classes=80,
                                        num_kernels=100, canvas_size=out["canvas_size"], valid_size=size,
                                        output_size=tuple(META["ori_shape"]))
    # the seeded network claims nothing here; the R-50 fixtures check the merging itself
    np.testing.assert_array_equal(ids.numpy() == 0, gold["pan_results"] == 133)
    assert len(segs) == len(set(np.unique(gold["pan_results"]).tolist()) - {133})


def test_unknown_dcn_option_is_one_config_error():
    from kmax_deeplab.config.schema import load_config
    from kmax_deeplab.errors import ConfigError

    assert load_config("synthetic/knet_tiny", ["model.dcn=DCNv2"]).model.dcn == "DCNv2"
    with pytest.raises(ConfigError, match=r"model\.dcn='DCNv3': unknown value; expected one of none, DCN, DCNv2"):
        load_config("synthetic/knet_tiny", ["model.dcn=DCNv3"])
