"""K-Net with the Swin backbone: parameter counts and the released checkpoint's key layout against
the original code (ZwwWayne/K-Net @5e50ee5 + mmdet 2.28.2 built on CPU, recorded in
tests/data/parity/swin/ by tools/make_swin_parity.py), the mmdet converter both ways, the presets
and the ImageNet (official Swin) importer through the family table."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from kmax_deeplab.checkpoints.mmdet import (
    _SWIN_DERIVED,
    MMDET_TO_OURS,
    load_mmdet_checkpoint,
    ours_to_mmdet,
    save_mmdet,
)
from kmax_deeplab.checkpoints.table import apply_rows, target_shapes
from kmax_deeplab.config import get_preset
from kmax_deeplab.modeling.families import get_family
from kmax_deeplab.modeling.knet import build_knet
from swin_test_utils import PARITY_DIR, official_classifier_checkpoint

COUNTS = json.loads((PARITY_DIR / "meta.json").read_text())["parameter_counts"]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_model(preset: str):
    cfg = get_preset(preset)
    with torch.device("meta"):
        return get_family("knet").build_model(cfg)


def test_swin_l_parameter_counts_equal_original():
    """Panoptic K-Net Swin-L = the original config built on CPU (208,781,224; backbone 194,998,164);
    our instance preset = the original instance head on that backbone (208,726,740)."""
    pan = _meta_model("coco/knet_swin_l_fpn_ms3x")
    assert _count(pan) == COUNTS["knet_swin_l_panoptic"] == 208_781_224
    assert _count(pan.backbone) == COUNTS["knet_swin_l_panoptic_backbone"] == 194_998_164
    assert _count(_meta_model("coco/knet_swin_l_fpn_ms3x_instance")) == COUNTS["knet_swin_l_instance"] == 208_726_740


def test_swin_l_checkpoint_layout_equals_original():
    """The original K-Net Swin-L's 541 state-dict entries map one-to-one onto ours (shapes equal), and
    ours map back onto exactly that set (with the relative_position_index buffers re-created)."""
    with gzip.open(PARITY_DIR / "knet_swin_l_panoptic_keys.json.gz", "rt") as f:
        original = {k: tuple(v) for k, v in json.load(f).items()}
    assert len(original) == 541
    ours = target_shapes(_meta_model("coco/knet_swin_l_fpn_ms3x"))
    fake = {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in original.items()}
    converted, _, unmatched = apply_rows(fake, MMDET_TO_OURS, ignored=_SWIN_DERIVED)
    assert unmatched == []
    assert {k: v.shape for k, v in converted.items()} == ours
    back = ours_to_mmdet({k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in ours.items()})
    assert {k: tuple(v.shape) for k, v in back.items()} == original


def test_presets_follow_the_original_config():
    cfg = get_preset("coco/knet_swin_l_fpn_ms3x")
    m, s = cfg.model, cfg.solver
    assert (m.backbone, m.backbone_drop_path, m.frozen_stages, m.task, m.num_classes) == ("swin_l", 0.2, -1,
                                                                                          "panoptic", 133)
    assert (m.train_short, m.image_size) == ((640, 800), (800, 1333))
    assert (s.batch_size, s.base_lr, s.weight_decay, s.backbone_lr_multiplier, s.clip_grad_norm) == (
        32, 1e-4, 0.05, 0.25, 1.0)
    assert s.max_iters == 36 * 3697 and s.lr_steps == (27 * 3697, 33 * 3697)
    inst = get_preset("coco/knet_swin_l_fpn_ms3x_instance")
    assert (inst.model.task, inst.model.num_classes, inst.model.backbone) == ("instance", 80, "swin_l")


def test_drop_path_refused_for_resnet():
    with pytest.raises(ValueError, match="no stochastic depth"):
        build_knet(backbone="resnet_tiny", backbone_drop_path=0.1)
    cfg = get_preset("coco/knet_r50_fpn_1x")
    cfg.model.backbone_drop_path = 0.1
    with pytest.raises(ValueError, match="model.backbone_drop_path"):
        get_family("knet").check_config(cfg)


@pytest.mark.slow
def test_swin_knet_forward_mmdet_round_trip_and_imagenet_init(tmp_path):
    """A K-Net on Swin-T: output shapes at a 62x93 photo size; save_mmdet -> load_mmdet_checkpoint is
    strict and exact; the family's ``imagenet`` importer loads an official Swin classifier file."""
    torch.manual_seed(0)
    model = build_knet(backbone="swin_t", num_stages=1, backbone_drop_path=0.2, frozen_stages=-1).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 62, 93) * 255)
    assert out["pred_masks"].shape == (1, 153, 16, 24) and out["pred_logits"].shape == (1, 153, 133)
    path = save_mmdet(model.state_dict(), tmp_path / "knet_swin_t.pth")
    raw = torch.load(path, weights_only=True)["state_dict"]
    assert raw["backbone.stages.0.blocks.1.attn.w_msa.relative_position_index"].shape == (49, 49)
    sd = load_mmdet_checkpoint(path, model)
    assert set(sd) == set(model.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())

    torch.manual_seed(1)
    other = build_knet(backbone="swin_t", num_stages=1, frozen_stages=-1)
    src = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(official_classifier_checkpoint(other.backbone, num_classes=1000), src)
    cfg = get_preset("coco/knet_swin_l_fpn_ms3x")
    get_family("knet").importers["imagenet"](src, model, cfg)
    for k, v in other.backbone.state_dict().items():
        if not k.startswith("norm"):
            assert torch.equal(model.backbone.state_dict()[k], v), k


@pytest.mark.slow
def test_knet_swin_t_equals_original():
    """Panoptic K-Net on Swin-T (the original's Swin-L config with Swin-T dims, seeded weights saved with
    save_mmdet and loaded there strictly) on a real photo at 62x93: backbone outputs, kernel head and every
    stage's class / mask logits within 1e-4 relative (measured <= 1.2e-6), the same panoptic partition."""
    from kmax_deeplab.modeling.knet.postprocess import knet_panoptic_inference
    from knet_test_utils import checksums, subsample
    from swin_test_utils import knet_photo, seeded_knet_swin

    torch.set_num_threads(1)
    gold = dict(np.load(PARITY_DIR / "knet_swin_t.npz"))
    model = seeded_knet_swin()
    image = torch.from_numpy(knet_photo()).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = model(image)
        feats = model.backbone(model.normalize(image))
    mine = {"head_masks": out["init_all_masks"], "head_semantic": out["semantic_logits"],
            **{f"res{i}": feats[f"res{i}"] for i in range(2, 6)}}
    for s, o in enumerate(out["aux_outputs"] + [out]):
        mine[f"s{s}_cls"], mine[f"s{s}_masks"] = o["pred_logits"], o["pred_masks"]
    assert len(mine) == 12
    for name, t in mine.items():
        x = t.numpy()
        assert list(x.shape) == list(gold[f"{name}.shape"]), name
        scale = np.abs(gold[f"{name}.val"]).max()
        np.testing.assert_allclose(subsample(x)[1], gold[f"{name}.val"], rtol=0, atol=1e-4 * scale, err_msg=name)
        ref_sum = gold[f"{name}.sum"]
        np.testing.assert_allclose(checksums(x)[1:], ref_sum[1:], rtol=1e-4, err_msg=name)
    ids, segs = knet_panoptic_inference(out["pred_logits"][0], out["pred_masks"][0], num_thing_classes=80,
                                        num_kernels=100, canvas_size=out["canvas_size"], valid_size=(62, 93),
                                        output_size=(62, 93))
    pan = gold["pan_results"]
    np.testing.assert_array_equal(ids.numpy() == 0, pan == 133)
    assert sorted(s["category_id"] for s in segs) == sorted(int(v) % 1000 for v in np.unique(pan) if v != 133)
    for seg in segs:
        assert np.unique(pan[ids.numpy() == seg["id"]]).size == 1


SEMANTIC = json.loads((PARITY_DIR / "meta.json").read_text())["semantic_counts"]


@pytest.mark.parametrize("preset,key", [("ade20k/knet_swin_t_upernet_512", "swin_t"),
                                        ("ade20k/knet_swin_l_upernet_640", "swin_l")])
def test_semantic_swin_presets_equal_original(preset, key):
    """Semantic K-Net + UPerNet on Swin: parameter counts (with and without the auxiliary head) and the
    weight-decay groups equal the original configs built with mmseg 0.30 / mmcv 1.7.2's optimizer
    constructor (paramwise ``absolute_pos_embed`` / ``relative_position_bias_table`` / ``norm``: no decay)."""
    cfg = get_preset(preset)
    family = get_family(cfg.model.meta_architecture)
    family.check_config(cfg)
    with torch.device("meta"):
        model = family.build_model(cfg)
    ref = SEMANTIC[key]
    assert _count(model) == ref["total"]
    assert _count(model) - _count(model.auxiliary_head) == ref["without_aux"]
    assert _count(model.backbone) == ref["backbone"]
    opt = family.build_optimizer(model, cfg)
    groups = {wd: [p for g in opt.param_groups if g["weight_decay"] == wd for p in g["params"]] for wd in (0.0, 5e-4)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(groups[0.0]) + len(groups[5e-4])
    no_decay = (len(groups[0.0]), sum(p.numel() for p in groups[0.0]))
    assert no_decay == (ref["no_decay_tensors"], ref["no_decay_elements"])
    assert (len(groups[5e-4]), sum(p.numel() for p in groups[5e-4])) == (ref["decay_tensors"], ref["decay_elements"])
    assert (cfg.solver.base_lr, cfg.solver.betas, cfg.solver.weight_decay) == (6e-5, (0.9, 0.999), 5e-4)
    assert cfg.data.crop_size == tuple(ref["crop"]) and cfg.model.image_size == (ref["crop"][0], 2048)
    assert cfg.model.backbone_drop_path == (0.3 if key == "swin_t" else 0.4)


def test_semantic_swin_refuses_dilated_heads():
    cfg = get_preset("ade20k/knet_swin_t_upernet_512")
    cfg.model.decode_head = "fcn"
    with pytest.raises(ValueError, match="output stride 32"):
        get_family(cfg.model.meta_architecture).check_config(cfg)


@pytest.mark.slow
def test_semantic_swin_t_forward():
    """The semantic K-Net + UPerNet on Swin-T gives ``sem_seg`` logits at the input size (eval)."""
    from kmax_deeplab.modeling.knet_semantic.model import build_knet_semantic

    torch.manual_seed(0)
    model = build_knet_semantic(backbone="swin_t", decode_head="upernet", num_classes=150, num_stages=1,
                                backbone_drop_path=0.3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 70, 90) * 255)
    assert out["sem_seg"].shape == (1, 150, 70, 90) and torch.isfinite(out["sem_seg"]).all()


def test_swin_checkpoint_into_resnet_config_refused_in_one_line():
    """A K-Net Swin-L state dict into an R-50 K-Net (and back) is refused in one line naming both backbones."""
    from kmax_deeplab.checkpoints.mmdet import mmdet_to_ours
    from kmax_deeplab.checkpoints.table import CheckpointMismatchError

    with gzip.open(PARITY_DIR / "knet_swin_l_panoptic_keys.json.gz", "rt") as f:
        swin_keys = json.load(f)
    swin_state = {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in swin_keys.items()}
    r50 = target_shapes(_meta_model("coco/knet_r50_fpn_1x"))
    with pytest.raises(CheckpointMismatchError, match="Swin backbone, but the model has a ResNet") as e:
        mmdet_to_ours(swin_state, r50, source="swin.pth")
    assert "\n" not in str(e.value)
    r50_state = ours_to_mmdet({k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in r50.items()})
    with pytest.raises(CheckpointMismatchError, match="ResNet backbone, but the model has a Swin"):
        mmdet_to_ours(r50_state, target_shapes(_meta_model("coco/knet_swin_l_fpn_ms3x")), source="r50.pth")


@pytest.mark.slow
def test_semantic_swin_t_equals_mmseg(tmp_path):
    """The semantic K-Net + UPerNet on Swin-T equals mmseg 0.30's own K-Net Swin-T config (mmseg's Swin and
    K-Net port: the layout of mmseg's released Swin files) with seeded weights exported by ``save_mmseg``
    and loaded there strictly: backbone, every stage, the final logits and the auxiliary head, in float64
    (<= 1e-9 relative; measured 3e-12). float32 is not the criterion: the soft gathering amplifies
    rounding on random weights (ours vs mmseg 1e-3 at stage 3, as large as mmseg fp32 vs its fp64)."""
    from kmax_deeplab.checkpoints.mmseg import load_mmseg_checkpoint, save_mmseg
    from knet_test_utils import checksums
    from swin_test_utils import seeded_semantic_swin, semantic_image

    torch.set_num_threads(1)
    gold = dict(np.load(PARITY_DIR / "semantic_swin_t.npz"))
    model = seeded_semantic_swin()
    assert _count(model) == int(gold["num_params"])
    path = save_mmseg(model.state_dict(), tmp_path / "sem.pth")
    model.load_state_dict(load_mmseg_checkpoint(path, model), strict=True)
    model.double()
    x = semantic_image().double()
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model.stage_logits(feats)
        final = model(x * model.pixel_std.double() + model.pixel_mean.double())["sem_seg"]
        aux = model.auxiliary_head(feats)
    mine = {f"s{i}": t for i, t in enumerate(logits)}
    mine.update({f"res{i}": feats[f"res{i}"] for i in range(2, 6)}, final=final, aux=aux)
    assert len(mine) == 10
    for name, t in mine.items():
        v = t.numpy()
        assert list(v.shape) == list(gold[f"{name}.shape"]), name
        step = max(1, -(-v.size // 1000))
        ref = gold[f"{name}.val"]
        np.testing.assert_allclose(v.reshape(-1)[::step], ref, rtol=0, atol=1e-9 * np.abs(ref).max(), err_msg=name)
        np.testing.assert_allclose(checksums(v)[1:], gold[f"{name}.sum"][1:], rtol=1e-9, err_msg=name)


@pytest.mark.slow
def test_mmseg_importer_swin_layouts_and_refusals():
    """``kmax convert --from mmseg`` reads a Swin semantic K-Net in mmseg 0.30's names and in the official
    Swin names (K-Net's own seg configs) to the same tensors; a ResNet checkpoint into a Swin model (and
    back) is refused in one line."""
    from kmax_deeplab.checkpoints.mmseg import mmseg_to_ours, ours_to_mmseg
    from kmax_deeplab.checkpoints.swin import ours_to_official
    from kmax_deeplab.checkpoints.table import CheckpointMismatchError
    from kmax_deeplab.modeling.knet_semantic.model import build_knet_semantic

    torch.manual_seed(0)
    model = build_knet_semantic(backbone="swin_t", decode_head="upernet", num_classes=150, num_stages=1)
    sd = model.state_dict()
    mm = ours_to_mmseg(sd)
    assert sum(k.endswith("relative_position_index") for k in mm) == 12 and len(mm) == len(sd) + 12
    back = mmseg_to_ours(mm, model)
    assert set(back) == set(sd) and all(torch.equal(back[k], v) for k, v in sd.items())
    official = {"backbone." + k: v for k, v in ours_to_official(
        {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}).items()}
    official.update({k: v for k, v in mm.items() if not k.startswith("backbone.")})
    back = mmseg_to_ours(official, model)
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    r50 = target_shapes(_meta_model_semantic("ade20k/knet_r50_d8_upernet_512"))
    with pytest.raises(CheckpointMismatchError, match="Swin backbone, but the model has a ResNet") as e:
        mmseg_to_ours(mm, r50, source="swin.pth")
    assert "\n" not in str(e.value)


def _meta_model_semantic(preset: str):
    cfg = get_preset(preset)
    with torch.device("meta"):
        return get_family(cfg.model.meta_architecture).build_model(cfg)


MMSEG_CONFIGS = {"ade20k/knet_swin_t_upernet_512_mmseg": "knet_s3_upernet_swin-t_8x2_512x512_adamw_80k_ade20k",
                 "ade20k/knet_swin_l_upernet_512_mmseg": "knet_s3_upernet_swin-l_8x2_512x512_adamw_80k_ade20k",
                 "ade20k/knet_swin_l_upernet_640_mmseg": "knet_s3_upernet_swin-l_8x2_640x640_adamw_80k_ade20k"}


@pytest.mark.parametrize("preset", sorted(MMSEG_CONFIGS))
def test_mmseg_swin_zoo_presets_equal_mmseg_configs(preset):
    """The presets of mmseg's released K-Net Swin files equal mmseg 0.30's own configs built on CPU: every
    state-dict key and shape both ways (mmseg's Swin names are ours), parameter count, drop path, crop; each
    has its zoo entry (mmseg's published mIoU)."""
    from kmax_deeplab.checkpoints.mmseg import MMSEG_TO_OURS, _SWIN_DERIVED as SEM_DERIVED, ours_to_mmseg
    from kmax_deeplab.checkpoints.zoo import ZOO

    with gzip.open(PARITY_DIR / "mmseg_swin_layouts.json.gz", "rt") as f:
        ref = json.load(f)[MMSEG_CONFIGS[preset]]
    cfg = get_preset(preset)
    model = _meta_model_semantic(preset)
    assert _count(model) == ref["num_params"]
    ours = target_shapes(model)
    zeros = {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in ref["keys"].items()}
    converted, _, unmatched = apply_rows(zeros, MMSEG_TO_OURS, ignored=SEM_DERIVED)
    assert unmatched == [] and {k: v.shape for k, v in converted.items()} == ours
    back = ours_to_mmseg({k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in ours.items()})
    assert {k: list(v.shape) for k, v in back.items()} == ref["keys"]
    assert (cfg.model.backbone_drop_path, list(cfg.data.crop_size)) == (ref["drop_path_rate"], ref["crop_size"])
    entry = next(e for e in ZOO.values() if e.source == "mmseg" and MMSEG_CONFIGS[preset] in e.url)
    assert entry.preset == preset and entry.metric == "mIoU" and entry.backbone == cfg.model.backbone
