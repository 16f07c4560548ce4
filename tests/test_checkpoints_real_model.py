"""Converted checkpoints strictly loaded into the real models (issue #6), no TensorFlow needed.

Models are built on the meta device (names and shapes only, no memory, no init) and loaded
with ``load_state_dict(strict=True, assign=True)``, so torch itself checks the key sets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _ckpt_layouts import (
    TF_SUFFIX,
    meta_model_shapes,
    our_shapes,
    random_bd_state,
    random_tf_variables,
    read_tsv,
    sane_tf_values,
    small_model_config,
)
from kmax_deeplab.checkpoints.deeplab2_tf import convert_deeplab2
from kmax_deeplab.checkpoints.detectron2 import bd_to_ours, ours_to_bd
from kmax_deeplab.data.catalog import get_dataset_meta


def _meta_model(preset: str) -> torch.nn.Module:
    from kmax_deeplab.modeling.kmax import build_kmax

    with torch.device("meta"):
        return build_kmax(small_model_config(preset).model)


def _strict_assign(model: torch.nn.Module, sd: dict) -> None:
    model.load_state_dict(sd, strict=True, assign=True)
    own = model.state_dict()
    assert all(own[k] is sd[k] or torch.equal(own[k], sd[k]) for k in sd)


def tfv(v: dict, name: str) -> np.ndarray:
    return v[name + TF_SUFFIX]


# ------------------------------------------------------------------ bytedance detectron2
@pytest.mark.parametrize("backbone,preset", [("r50", "coco/kmax_r50"), ("convnext_tiny", "coco/kmax_convnext_tiny")])
def test_bd_state_dict_into_real_model_and_back(checkpoint_layouts, backbone, preset):
    bd = random_bd_state(checkpoint_layouts, backbone)
    model = _meta_model(preset)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == our_shapes(checkpoint_layouts, backbone)
    ours = bd_to_ours(bd, model)
    _strict_assign(model, ours)
    back = ours_to_bd(model.state_dict())  # the real model's state dict, renamed to BD
    assert set(back) == set(bd)
    for k, v in bd.items():
        assert np.array_equal(back[k], v.numpy()), k


# ------------------------------------------------------------------ deeplab2 COCO (no TF writer)
@pytest.mark.parametrize("backbone,preset", [("r50", "coco/kmax_r50_deeplab2"),
                                             ("convnext_tiny", "coco/kmax_convnext_tiny")])
def test_deeplab2_coco_into_real_model(checkpoint_layouts, backbone, preset):
    v = random_tf_variables(checkpoint_layouts, backbone)
    model = _meta_model(preset)
    cfg = small_model_config(preset)
    sd = convert_deeplab2(v, model, dataset="coco", num_classes=133, backbone=cfg.model.backbone)
    _strict_assign(model, sd)
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == len(v)  # every TF tensor used


# ------------------------------------------------------------------ deeplab2 Cityscapes
def cityscapes_tf_shapes(layouts) -> dict[str, tuple[int, ...]]:
    """The TF variables of a deeplab2 kMaX-R50 Cityscapes checkpoint, derived from the COCO TSV.

    No Cityscapes TSV exists; these are ASSUMPTIONS from the spec's rules (§1.4-§1.5, §5.2):

    - no ``semantic_decoder/*`` (Cityscapes has no aux semantic decoder): the aux semantic
      head ``semantic_head_without_last_layer/_conv1_bn_act/{_depthwise,_pointwise}`` works
      on the 2048-channel backbone output and ``semantic_last_layer`` has 19 outputs (no void);
    - the stem stage is one more pixel-decoder stage named like the others:
      ``pixel_decoder/_backbone_norms/4`` (64), ``_skip_connections/3/_resized_conv_bn{1,2}``
      (256 -> 32, 64 -> 32) and ``_stages/4/_block1`` (bottleneck 32 -> 128);
    - class heads have 20 outputs; 256 cluster centres; the final pixel-space head reads the
      128-channel stride-2 feature. Kernels are in TF layout ``[kh, kw, in, out]``.
    """
    tsv = read_tsv(layouts / "deeplab2_kmax_r50_coco.variables.tsv")
    s = {k[: -len(TF_SUFFIX)]: v for k, v in tsv.items() if k.endswith(TF_SUFFIX)
         and not k.startswith(("semantic_decoder/", "global_step", "save_counter"))}

    def bn(prefix: str, c: int) -> None:
        for p in ("gamma", "beta", "moving_mean", "moving_variance"):
            s[f"{prefix}/{p}"] = (c,)

    def conv_bn(prefix: str, kh: int, cin: int, cout: int) -> None:
        s[f"{prefix}/_conv/kernel"] = (kh, kh, cin, cout)
        bn(f"{prefix}/_batch_norm", cout)

    s["pixel_decoder/_backbone_norms/4/gamma"] = s["pixel_decoder/_backbone_norms/4/beta"] = (64,)
    conv_bn("pixel_decoder/_skip_connections/3/_resized_conv_bn1", 1, 256, 32)
    conv_bn("pixel_decoder/_skip_connections/3/_resized_conv_bn2", 1, 64, 32)
    stem = "pixel_decoder/_stages/4/_block1"
    conv_bn(f"{stem}/_conv1_bn_act", 1, 32, 32)
    conv_bn(f"{stem}/_conv2_bn_act", 3, 32, 32)
    conv_bn(f"{stem}/_conv3_bn", 1, 32, 128)
    conv_bn(f"{stem}/_shortcut", 1, 32, 128)
    for k in [k for k in s if "transformer_class_head/_conv/" in k]:
        s[k] = (1, 256, 20) if k.endswith("kernel") else (20,)
    s["transformer_decoder/cluster_centers"] = (1, 256, 256)
    head = "pixel_space_head/conv_block/_conv1_bn_act"
    s[f"{head}/_depthwise/_depthwise_conv/depthwise_kernel"] = (5, 5, 128, 1)
    bn(f"{head}/_depthwise/_batch_norm", 128)
    s[f"{head}/_pointwise/_conv/kernel"] = (1, 1, 128, 256)
    sem = "semantic_head_without_last_layer/_conv1_bn_act"
    s[f"{sem}/_depthwise/_depthwise_conv/depthwise_kernel"] = (5, 5, 2048, 1)
    bn(f"{sem}/_depthwise/_batch_norm", 2048)
    s[f"{sem}/_pointwise/_conv/kernel"] = (1, 1, 2048, 256)
    s["semantic_last_layer/kernel"], s["semantic_last_layer/bias"] = (1, 1, 256, 19), (19,)
    return {k + TF_SUFFIX: v for k, v in s.items()}


def _tf_channel_order(dataset: str) -> list[int]:
    """Oracle from the catalog's isthing flags: TF class channel k holds train id order[k]."""
    cats = get_dataset_meta(dataset).categories
    return [i for i, c in enumerate(cats) if c["isthing"]] + [i for i, c in enumerate(cats) if not c["isthing"]]


def test_deeplab2_cityscapes_into_real_model(checkpoint_layouts):
    v = sane_tf_values(cityscapes_tf_shapes(checkpoint_layouts), np.random.default_rng(1))
    model = _meta_model("cityscapes/kmax_r50_deeplab2")
    sd = convert_deeplab2(v, model, dataset="cityscapes", num_classes=19, backbone="resnet50_deeplab2")
    _strict_assign(model, sd)
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == len(v)
    order = _tf_channel_order("cityscapes")
    assert order[:8] == list(range(11, 19))  # person, rider, car, truck, bus, train, motorcycle, bicycle
    for layer in ("predictor._predictor.", "predictor._kmax_transformer_layers.4._predictor."):
        tf_name = ("" if layer == "predictor._predictor." else
                   "transformer_decoder/_kmax_decoder/4/_block1_transformer/_auxiliary_clustering_predictor/_")
        w = tfv(v, f"{tf_name}transformer_class_head/_conv/kernel")  # [1, 256, 20]
        b = tfv(v, f"{tf_name}transformer_class_head/_conv/bias")
        ow = sd[layer + "_transformer_class_head.conv.weight"].numpy()  # [20, 256, 1]
        ob = sd[layer + "_transformer_class_head.conv.bias"].numpy()
        for k, train_id in enumerate(order + [19]):  # void stays last
            np.testing.assert_array_equal(ow[train_id, :, 0], w[0, :, k])
            assert ob[train_id] == b[k]
    sem = "predictor._auxiliary_semantic_predictor."
    np.testing.assert_array_equal(sd[sem + "0.conv.weight"].numpy(), tfv(
        v, "semantic_head_without_last_layer/_conv1_bn_act/_depthwise/_depthwise_conv/depthwise_kernel"
    ).transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(sd[sem + "1.norm.running_var"].numpy(), tfv(
        v, "semantic_head_without_last_layer/_conv1_bn_act/_pointwise/_batch_norm/moving_variance"))
    np.testing.assert_array_equal(sd[sem + "2.conv.bias"].numpy(), tfv(v, "semantic_last_layer/bias"))  # no void
    np.testing.assert_array_equal(sd["pixel_decoder._stages.4._blocks.0._conv2_bn_act.conv.weight"].numpy(),
                                  tfv(v, "pixel_decoder/_stages/4/_block1/_conv2_bn_act/_conv/kernel").transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(sd["pixel_decoder._in_norms.4.weight"].numpy(),
                                  tfv(v, "pixel_decoder/_backbone_norms/4/gamma"))


# ------------------------------------------------------------------ deeplab2 ADE20K
def test_deeplab2_ade20k_into_real_model(checkpoint_layouts):
    """ADE20K-150: COCO's ConvNeXt-T variables with 151-way class heads and semantic layer."""
    shapes = {}
    for k, s in read_tsv(checkpoint_layouts / "deeplab2_kmax_convnext_tiny_coco.variables.tsv").items():
        if k.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "global_step")):
            continue
        if "transformer_class_head/_conv/" in k or k.startswith("semantic_last_layer/"):
            s = s[:-1] + (151,)
        shapes[k] = s
    v = sane_tf_values(shapes, np.random.default_rng(2))
    model = _meta_model("ade20k/kmax_convnext_tiny_641")
    sd = convert_deeplab2(v, model, dataset="ade20k", num_classes=150, backbone="convnext_tiny")
    _strict_assign(model, sd)
    order = _tf_channel_order("ade20k")
    assert len(order) == 150 and len(get_dataset_meta("ade20k").thing_train_ids) == 100
    assert order != list(range(150))  # ADE20K interleaves things and stuff: a real permutation
    b = tfv(v, "transformer_class_head/_conv/bias")
    ob = sd["predictor._predictor._transformer_class_head.conv.bias"].numpy()
    w = tfv(v, "transformer_decoder/_kmax_decoder/0/_block1_transformer/_auxiliary_clustering_predictor/"
               "_transformer_class_head/_conv/kernel")
    ow = sd["predictor._kmax_transformer_layers.0._predictor._transformer_class_head.conv.weight"].numpy()
    for k, train_id in enumerate(order + [150]):
        assert ob[train_id] == b[k]
        np.testing.assert_array_equal(ow[train_id, :, 0], w[0, :, k])
    # Semantic last layer: dataset order already, void moves from channel 0 to channel C.
    sb = tfv(v, "semantic_last_layer/bias")
    np.testing.assert_array_equal(sd["predictor._auxiliary_semantic_predictor.final_conv.conv.bias"].numpy(),
                                  np.concatenate([sb[1:], sb[:1]]))


def test_meta_shapes_helper_matches_bd_tsv(checkpoint_layouts):
    assert meta_model_shapes("coco/kmax_r50") == our_shapes(checkpoint_layouts, "r50")
