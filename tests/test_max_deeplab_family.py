"""MaX-DeepLab through the family table: presets (spec §5), LR rule, config checks, conversion
refusals and ``kmax predict`` with a converted deeplab2-layout checkpoint (panopticapi oracle)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from _max_parity import DATA, read_layout, seeded_variables
from kmax_deeplab import cli
from kmax_deeplab.checkpoints.deeplab2_tf import convert_deeplab2
from kmax_deeplab.checkpoints.table import CheckpointMismatchError
from kmax_deeplab.config import get_preset, list_presets
from kmax_deeplab.engine.writers import rgb_to_id
from kmax_deeplab.modeling.families import FAMILIES, family_of
from kmax_deeplab.modeling.max_deeplab.family import is_pretrained_encoder_parameter

from panopticapi.evaluation import pq_compute


@pytest.mark.parametrize("name,variant,size,lr,params", [
    ("coco/max_deeplab_s_641", "s", 641, 1e-3, 77_756_942),
    ("coco/max_deeplab_s_1025", "s", 1025, 1e-3, 77_756_942),
    ("coco/max_deeplab_l_1025", "l", 1025, 3e-4, 450_871_278),
])
def test_coco_presets_follow_the_deeplab2_recipe(name, variant, size, lr, params):
    cfg = get_preset(name)
    assert name in list_presets() and cfg.model.meta_architecture == "max_deeplab"
    family = family_of(cfg)
    family.check_config(cfg)
    assert (cfg.model.variant, tuple(cfg.model.image_size), cfg.model.num_queries) == (variant, (size, size), 128)
    s = cfg.solver
    assert (s.optimizer, s.eps, s.weight_decay, s.base_lr, s.batch_size) == ("adam", 1e-7, 0.0, lr, 64)
    assert (s.warmup_iters, s.warmup_factor, s.poly_power, s.backbone_lr_multiplier) == (5000, 0.0, 0.9, 0.1)
    assert (cfg.data.min_scale, cfg.data.max_scale, tuple(cfg.data.crop_size)) == (0.5, 1.5, (size, size))
    loss = cfg.loss
    assert (loss.class_weight, loss.dice_weight, loss.mask_id_weight, loss.instance_discrimination_weight,
            loss.semantic_weight) == (3.0, 3.0, 0.3, 1.0, 1.0)
    pp = cfg.postprocess
    assert (pp.class_threshold, pp.pixel_confidence_threshold) == (0.7, 0.4)
    assert (pp.thing_area_limit, pp.stuff_area_limit) == ((100, 1600) if size == 641 else (256, 4096))
    if size == 1025:
        return  # same network as the 641 preset (S) / counted in test_max_deeplab_model.py (L)
    with torch.device("meta"):
        model = family.build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == params
    opt = family.build_optimizer(model, cfg)
    assert type(opt) is torch.optim.Adam and opt.defaults["eps"] == 1e-7
    slow = {n for g in opt.param_groups if g["lr_multiplier"] == 0.1 for n in g["names"]}
    fast = {n for g in opt.param_groups if g["lr_multiplier"] == 1.0 for n in g["names"]}
    assert slow and not slow & fast
    # deeplab2's backbone optimizer holds 41,343,424 of the 61,726,624 encoder parameters
    # (its name rule applied to the Keras variables of max_deeplab_s, read off deeplab2 on CPU)
    assert sum(p.numel() for g in opt.param_groups if g["lr_multiplier"] == 0.1 for p in g["params"]) == 41_343_424
    assert "encoder.stage5.block1.attention._height_axis.qkv_transform.conv.weight" in slow
    for n in ("encoder.memory_feature", "encoder.stage5.block1_transformer._memory_qkv_conv_bn.conv.weight",
              "encoder.class_feature_extra.conv.weight", "predictor._transformer_class_head.conv.weight"):
        assert n in fast, n
    assert all(is_pretrained_encoder_parameter(n) for n in slow)


def test_lr_rule_is_deeplab2s_name_rule():
    assert is_pretrained_encoder_parameter("encoder.stem.conv1_bn_act.conv.weight")
    assert is_pretrained_encoder_parameter("encoder.decoder_stage1.block1.conv1_bn_act.conv.weight")  # L backbone
    for n in ("encoder.stage5_extra.block1.conv1_bn_act.conv.weight", "encoder.decoder_stage2_extra.block1.x",
              "encoder.stage5.block2_transformer.x", "encoder.memory_feature", "semantic_head._aspp.x",
              "predictor._pixel_space_head_conv0bnact.conv.weight"):
        assert not is_pretrained_encoder_parameter(n), n


def test_config_checks_name_the_option():
    cfg = get_preset("coco/max_deeplab_s_641")
    family = FAMILIES["max_deeplab"]
    bad = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone="wide_resnet41"))
    with pytest.raises(ValueError, match="model.backbone 'wide_resnet41' does not match model.variant 's'"):
        family.check_config(bad)
    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, crop_size=(513, 513)))
    with pytest.raises(ValueError, match="data.crop_size"):
        family.check_config(bad)


def test_kmax_converter_refuses_a_max_checkpoint_in_one_line():
    names = [n for n, _ in read_layout(DATA / "deeplab2_max_s_129.layout.tsv")]
    with pytest.raises(CheckpointMismatchError) as e:
        convert_deeplab2({n: np.zeros(1, np.float32) for n in names}, {}, dataset="coco", num_classes=133)
    assert "MaX-DeepLab checkpoint but the model is kMaX-DeepLab" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_predict_with_a_converted_max_checkpoint_writes_valid_coco_panoptic(tmp_path, coco_sample):
    from kmax_deeplab.checkpoints.deeplab2_max import convert_deeplab2_max
    from kmax_deeplab.checkpoints.native import save_native
    from kmax_deeplab.config import load_config

    # deeplab2-layout seeded weights -> our converter -> a native folder at a 129 canvas
    cfg = load_config("coco/max_deeplab_s_641", ["model.image_size=[129,129]", "data.crop_size=[129,129]",
                                                 "postprocess.class_threshold=0.0",
                                                 "postprocess.pixel_confidence_threshold=0.0",
                                                 "postprocess.thing_area_limit=0", "postprocess.stuff_area_limit=0"])
    model = family_of(cfg).build_model(cfg)
    state = convert_deeplab2_max(seeded_variables(read_layout(DATA / "deeplab2_max_s_129.layout.tsv"), 0), model,
                                 variant="s")
    weights = save_native(tmp_path / "max_s", state, cfg, {"source": "deeplab2"})
    sample = coco_sample / "sample_data"
    out = tmp_path / "out"
    assert cli.main(["predict", str(sample / "input_images"), "--output", str(out), "--weights", str(weights),
                     "--quiet"]) == 0
    pred = json.loads((out / "predictions.json").read_text())
    assert sorted(a["image_id"] for a in pred["annotations"]) == [142238, 439180]
    assert all(a["segments_info"] for a in pred["annotations"])
    for ann in pred["annotations"]:
        ids = rgb_to_id(np.asarray(Image.open(out / ann["file_name"])))
        uniq, counts = np.unique(ids, return_counts=True)
        assert {int(i): int(c) for i, c in zip(uniq, counts) if i} == {s["id"]: s["area"] for s in ann["segments_info"]}
    result = pq_compute(str(sample / "panoptic_examples.json"), str(out / "predictions.json"),
                        gt_folder=str(sample / "panoptic_examples"), pred_folder=str(out))
    assert 0.0 <= result["All"]["pq"] <= 1.0 and result["All"]["n"] > 0
