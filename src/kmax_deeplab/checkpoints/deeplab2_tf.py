"""deeplab2 (TensorFlow) kMaX-DeepLab checkpoints -> our state dict.

Implements spec ``kmax_deeplab.md`` §5.2 as a table (:mod:`.table`): the name rules
(``/.ATTRIBUTES/VARIABLE_VALUE`` stripped; optimizer slots, ``_CHECKPOINTABLE_OBJECT_GRAPH``,
``save_counter``, ``global_step`` skipped; 1-based ``_block{b}`` -> 0-based) and the tensor
rules (TF ``[kh, kw, in, out]`` -> ``[out, in, kh, kw]`` etc.). Our names are the BD names
with ``sem_seg_head.`` dropped and ``_predcitor`` spelled ``_predictor``.

Two deliberate differences from BD's ``convert-tf-weights-to-d2.py`` (spec §5.2 caveats):

1. ResNet-50 goes into the deeplab2-layout backbone (``resnet50_deeplab2``: no max-pool,
   pre-activation blocks, stride in stage 2), spec §1.1; the parameter names are BD's.
2. The auxiliary semantic last layer of COCO/ADE20K keeps void at channel 0 in TF; we move
   it to the last channel (our convention: void is index C), so aux-loss fine-tuning works.

Class heads with Cityscapes/ADE20K outputs are reordered from TF's [things, stuff, void]
to dataset (train-id) order with void last, in all 7 predictors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from kmax_deeplab.checkpoints.table import (
    CheckpointMismatchError,
    Row,
    apply_rows,
    check_against_target,
    identity,
    target_shapes,
)

__all__ = ["IGNORED", "convert_deeplab2", "deeplab2_rows", "load_deeplab2_checkpoint",
           "tf_class_order", "detect_backbone"]

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

#: Foreign names dropped on purpose (after the suffix is stripped).
IGNORED = (
    r"_CHECKPOINTABLE_OBJECT_GRAPH",
    r"save_counter",
    r"global_step",
    r"optimizer/.*",
    r".*/\.OPTIMIZER_SLOT/.*",
    r".*/\.ATTRIBUTES/.*",  # non-variable attributes (e.g. OBJECT_CONFIG_JSON)
)


# ----------------------------------------------------------------------------- transforms
def by_rank(x: np.ndarray) -> np.ndarray:
    """Default TF->torch kernel layout by rank (spec §5.2 "Otherwise, by rank").

    rank 1/2 unchanged; rank 3 Conv1D ``[k, in, out] -> [out, in, k]``; rank 4 Conv2D
    ``[kh, kw, in, out] -> [out, in, kh, kw]`` (also ConvNeXt's grouped ``[7, 7, 1, C]``).
    """
    if x.ndim == 3:
        return x.transpose(2, 1, 0)
    if x.ndim == 4:
        return x.transpose(3, 2, 0, 1)
    return x


def conv1d_to_conv2d(x: np.ndarray) -> np.ndarray:
    """TF Conv1D kernel ``[1, in, out]`` -> torch 1x1 Conv2d ``[out, in, 1, 1]``."""
    _check_rank(x, 3, "Conv1D kernel [1, in, out]")
    return x[0].T[:, :, None, None]


def depthwise(x: np.ndarray) -> np.ndarray:
    """TF depthwise kernel ``[kh, kw, C, 1]`` -> torch grouped conv ``[C, 1, kh, kw]``."""
    _check_rank(x, 4, "depthwise kernel [kh, kw, C, 1]")
    return x.transpose(2, 3, 0, 1)


def qkv_kernel(x: np.ndarray) -> np.ndarray:
    """Axial-attention ``qkv_kernel`` ``[in, out]`` -> Conv1d ``[out, in, 1]``."""
    _check_rank(x, 2, "qkv_kernel [in, out]")
    return x.T[:, :, None]


def cluster_centers(x: np.ndarray) -> np.ndarray:
    """``cluster_centers`` ``[1, N, D]`` -> embedding weight ``[D, N]`` (index 0, transpose)."""
    _check_rank(x, 3, "cluster_centers [1, N, D]")
    return x[0].T


def dense(x: np.ndarray) -> np.ndarray:
    """ConvNeXt Dense ``[in, out]`` -> Linear ``[out, in]``."""
    _check_rank(x, 2, "Dense kernel [in, out]")
    return x.T


def flatten(x: np.ndarray) -> np.ndarray:
    """Multi-axis BN statistics / layer scale -> one channel axis, C order (spec §5.2)."""
    return x.reshape(-1)


def _check_rank(x: np.ndarray, rank: int, what: str) -> None:
    if x.ndim != rank:
        raise CheckpointMismatchError(f"expected a {what}, got shape {list(x.shape)}")


# ----------------------------------------------------------------------------- class orders
def tf_class_order(dataset: str, num_classes: int) -> list[int]:
    """Train ids in the order of TF's class-head channels (void excluded).

    deeplab2 puts thing classes first, then stuff, each in dataset order. COCO already
    has things (train ids 0..79) first, so its order is the identity.

    Args:
        dataset: ``"coco"``, ``"cityscapes"``, ``"ade20k"`` or a catalog name.
        num_classes: C.

    Returns:
        ``order`` such that TF channel ``k`` holds train id ``order[k]``.
    """
    things = _thing_ids(dataset, num_classes)
    return sorted(things) + [i for i in range(num_classes) if i not in things]


def _thing_ids(dataset: str, num_classes: int) -> set[int]:
    if dataset == "cityscapes":
        return set(range(11, 19))  # person, rider, car, truck, bus, train, motorcycle, bicycle
    if dataset == "coco":
        return set(range(80))
    try:
        from kmax_deeplab.data.catalog import get_dataset_meta  # lazy: data helper's module
    except ImportError as e:
        raise CheckpointMismatchError(
            f"need the thing/stuff split of {dataset!r} to reorder the class head, but "
            f"kmax_deeplab.data.catalog is unavailable ({e})") from None
    meta = get_dataset_meta(dataset)
    if meta.num_classes != num_classes:
        raise CheckpointMismatchError(f"dataset {dataset!r} has {meta.num_classes} classes, "
                                      f"the model {num_classes}")
    return set(meta.thing_train_ids)


def _reorder_rows(order: Sequence[int]) -> "callable":
    """Transform moving TF class channels ``[things, stuff, void]`` to ``[0..C-1, void]`` (dim 0)."""
    perm = np.asarray(order)
    # ours[perm[k]] = tf[k] for k < C  <=>  ours = tf[argsort(perm)]; void (index C) stays.
    index = np.concatenate([np.argsort(perm), [len(perm)]])

    def reorder_class_rows(x: np.ndarray) -> np.ndarray:
        x = by_rank(x)
        if x.shape[0] != len(index):
            raise CheckpointMismatchError(f"class head has {x.shape[0]} outputs, expected "
                                          f"{len(index)} (C + 1 void)")
        return x[index]

    return reorder_class_rows


def _semantic_void_last(num_classes: int) -> "callable":
    def shift_void_last(x: np.ndarray) -> np.ndarray:
        x = by_rank(x)
        if x.shape[0] == num_classes + 1:
            # TF [void, 0..C-1] -> ours [0..C-1, void].
            return np.concatenate([x[1:], x[:1]], axis=0)
        return x  # Cityscapes: C channels, no void channel.

    return shift_void_last


# ----------------------------------------------------------------------------- rows
_BN_P = r"(?P<p>gamma|beta|moving_mean|moving_variance)"
_LN_P = r"(?P<p>gamma|beta)"


def _bn(tf: str, ours: str) -> list[Row]:
    return [Row(rf"{tf}/{_BN_P}", ours + ".{p:bn}", flatten)]


def _conv_bn(tf: str, ours: str, *, kernel=by_rank, conv: str = ".conv", norm: str = ".norm",
             tf_conv: str = "_conv", tf_kernel: str = "kernel") -> list[Row]:
    """Rows of a deeplab2 ``Conv2DBN``-like block: ``{tf}/_conv/kernel[,bias]`` + ``{tf}/_batch_norm``."""
    return [
        Row(rf"{tf}/{tf_conv}/{tf_kernel}", ours + conv + ".weight", kernel),
        Row(rf"{tf}/{tf_conv}/bias", ours + conv + ".bias"),
        *_bn(f"{tf}/_batch_norm", ours + norm),
    ]


def _sep_conv(tf: str, ours_dw: str, ours_pw: str) -> list[Row]:
    """A deeplab2 depthwise-separable ``_conv1_bn_act`` (5x5 depthwise + 1x1 pointwise)."""
    return [*_conv_bn(f"{tf}/_depthwise", ours_dw, kernel=depthwise, tf_conv="_depthwise_conv",
                      tf_kernel="depthwise_kernel"),
            *_conv_bn(f"{tf}/_pointwise", ours_pw)]


def _predictor_rows(tf: str, ours: str, u: str, class_rows) -> list[Row]:
    """The 7 kMaX predictors; ``u`` is TF's item prefix (``_`` per layer, empty for the final)."""
    return [
        *_sep_conv(f"{tf}{u}pixel_space_head/conv_block/_conv1_bn_act",
                   f"{ours}_pixel_space_head_conv0bnact", f"{ours}_pixel_space_head_conv1bnact"),
        Row(rf"{tf}{u}pixel_space_head/final_conv/kernel", f"{ours}_pixel_space_head_last_convbn.conv.weight", by_rank),
        Row(rf"{tf}{u}pixel_space_head/final_conv/bias", f"{ours}_pixel_space_head_last_convbn.conv.bias"),
        *_bn(f"{tf}{u}pixel_space_feature_batch_norm", f"{ours}_pixel_space_head_last_convbn.norm"),
        *_bn(f"{tf}{u}pixel_space_mask_batch_norm", f"{ours}_pixel_space_mask_batch_norm"),
        Row(rf"{tf}{u}transformer_class_head/_conv/(?P<p>kernel|bias)",
            f"{ours}_transformer_class_head.conv." + "{p:wb}", class_rows),
        *_conv_bn(f"{tf}{u}transformer_mask_head", f"{ours}_transformer_mask_head"),
    ]


def semantic_decoder_rows(sem: str, sem_last) -> list[Row]:
    """Rows of deeplab2's Panoptic-DeepLab semantic decoder + head (kMaX and MaX-S share it).

    Args:
        sem: our module prefix of an :class:`~kmax_deeplab.modeling.kmax.semantic_head.AuxSemanticDecoder`.
        sem_last: transform of the last layer's kernel and bias (class-channel order).
    """
    os_of = {"1": "8", "2": "4"}
    rows = [
        *_conv_bn(r"semantic_decoder/_aspp/_conv_bn_act", sem + "_aspp._aspp_conv0"),
        *_conv_bn(r"semantic_decoder/_aspp/_aspp_conv(?P<k>[1-9])/_conv_bn_act", sem + "_aspp._aspp_conv{k}"),
        *_conv_bn(r"semantic_decoder/_aspp/_aspp_pool/_conv_bn_act", sem + "_aspp._aspp_pool"),
        *_conv_bn(r"semantic_decoder/_aspp/_proj_conv_bn_act", sem + "_aspp._proj_conv_bn_act"),
    ]
    for k, os_ in os_of.items():
        rows += _conv_bn(rf"semantic_decoder/_low_level_conv{k}", sem + f"_low_level_projection_os{os_}")
        rows += _sep_conv(rf"semantic_decoder/_fusion_conv{k}/_conv1_bn_act",
                          sem + f"_low_level_fusion_os{os_}_conv0_bn_act",
                          sem + f"_low_level_fusion_os{os_}_conv1_bn_act")
    rows += [
        *_sep_conv(r"semantic_head_without_last_layer/_conv1_bn_act", sem + "conv_block_0", sem + "conv_block_1"),
        Row(r"semantic_last_layer/kernel", sem + "final_conv.conv.weight", sem_last),
        Row(r"semantic_last_layer/bias", sem + "final_conv.conv.bias", sem_last),
    ]
    return rows


def deeplab2_rows(dataset: str = "coco", num_classes: int = 133, *,
                  semantic_void_last: bool = True) -> list[Row]:
    """The whole TF -> ours table (spec §5.2) for R50 and ConvNeXt backbones.

    Args:
        dataset: decides the class-head order (see :func:`tf_class_order`).
        num_classes: C (without void).
        semantic_void_last: move void of the TF aux semantic last layer from channel 0 to
            channel C (default). False keeps BD's unshifted layout.
    """
    order = tf_class_order(dataset, num_classes)
    class_rows = _reorder_rows(order)
    sem_last = _semantic_void_last(num_classes) if semantic_void_last else by_rank
    d = r"(?P<b>\d+)"
    r50 = {"_conv1_bn_act": "conv1", "_conv2_bn_act": "conv2", "_conv3_bn": "conv3", "_shortcut": "shortcut"}
    rows: list[Row] = [
        # --- ResNet-50 (deeplab2 layout) -> backbone.stem / backbone.res{s}.{b-1}
        *_conv_bn("encoder/_stem", "backbone.stem.conv1", conv="", norm=".norm"),
    ]
    for tf_m, ours_m in r50.items():
        rows += _conv_bn(rf"encoder/_stage(?P<s>[2-5])/_block{d}/{tf_m}",
                         "backbone.res{s}.{b:-1}." + ours_m, conv="", norm=".norm")
    rows += [
        # --- ConvNeXt -> backbone.downsample_layers / backbone.stages
        Row(r"encoder/downsample_layers/0/layer_with_weights-0/(?P<p>kernel|bias)",
            "backbone.downsample_layers.0.0.{p:wb}", by_rank),
        Row(rf"encoder/downsample_layers/0/layer_with_weights-1/{_LN_P}", "backbone.downsample_layers.0.1.{p:bn}"),
        Row(rf"encoder/downsample_layers/(?P<i>[1-9])/layer_with_weights-0/{_LN_P}",
            "backbone.downsample_layers.{i}.0.{p:bn}"),
        Row(r"encoder/downsample_layers/(?P<i>[1-9])/layer_with_weights-1/(?P<p>kernel|bias)",
            "backbone.downsample_layers.{i}.1.{p:wb}", by_rank),
        Row(r"encoder/stages/(?P<i>\d+)/layer_with_weights-(?P<j>\d+)/depthwise_conv/(?P<p>kernel|bias)",
            "backbone.stages.{i}.{j}.dwconv.{p:wb}", by_rank),
        Row(rf"encoder/stages/(?P<i>\d+)/layer_with_weights-(?P<j>\d+)/norm/{_LN_P}",
            "backbone.stages.{i}.{j}.norm.{p:bn}"),
        Row(r"encoder/stages/(?P<i>\d+)/layer_with_weights-(?P<j>\d+)/pointwise_conv(?P<k>[12])/kernel",
            "backbone.stages.{i}.{j}.pwconv{k}.weight", dense),
        Row(r"encoder/stages/(?P<i>\d+)/layer_with_weights-(?P<j>\d+)/pointwise_conv(?P<k>[12])/bias",
            "backbone.stages.{i}.{j}.pwconv{k}.bias"),
        Row(r"encoder/stages/(?P<i>\d+)/layer_with_weights-(?P<j>\d+)/layer_scale",
            "backbone.stages.{i}.{j}.gamma", flatten),
        # --- pixel decoder
        Row(rf"pixel_decoder/_backbone_norms/(?P<i>\d+)/{_LN_P}", "pixel_decoder._in_norms.{i}.{p:bn}"),
        *_conv_bn(r"pixel_decoder/_skip_connections/(?P<i>\d+)/_resized_conv_bn1",
                  "pixel_decoder._resized_fuses.{i}._conv_bn_low"),
        *_conv_bn(r"pixel_decoder/_skip_connections/(?P<i>\d+)/_resized_conv_bn2",
                  "pixel_decoder._resized_fuses.{i}._conv_bn_high"),
        *_conv_bn(rf"pixel_decoder/_stages/(?P<s>\d+)/_block{d}/(?P<m>_conv[123]_bn(?:_act)?|_shortcut)",
                  "pixel_decoder._stages.{s}._blocks.{b:-1}.{m}"),
    ]
    axial = rf"pixel_decoder/_stages/(?P<s>\d+)/_block{d}/_attention/(?P<a>_height_axis|_width_axis)"
    axial_ours = "pixel_decoder._stages.{s}._blocks.{b:-1}._attention.{a}"
    rows += [
        Row(rf"{axial}/qkv_kernel", axial_ours + ".qkv_transform.conv.weight", qkv_kernel),
        Row(rf"{axial}/(?P<r>_query_rpe|_key_rpe|_value_rpe)/embeddings", axial_ours + ".{r}._embeddings.weight"),
        *_bn(rf"{axial}/(?P<n>_batch_norm_qkv|_batch_norm_similarity|_batch_norm_retrieved_output)",
             axial_ours + ".{n}"),
    ]
    # --- transformer decoder
    layer = r"transformer_decoder/_kmax_decoder/(?P<i>\d+)/_block1_transformer"
    layer_ours = "predictor._kmax_transformer_layers.{i}"
    rows += [
        Row(r"transformer_decoder/cluster_centers", "predictor._cluster_centers.weight", cluster_centers),
        *_conv_bn(r"transformer_decoder/(?P<m>_class_embedding_projection|_mask_embedding_projection)",
                  "predictor.{m}"),
        *_conv_bn(rf"{layer}/_memory_(?P<m>conv1_bn_act|qkv_conv_bn|conv3_bn|ffn_conv1_bn_act|ffn_conv2_bn)",
                  layer_ours + "._query_{m}"),
        *_conv_bn(rf"{layer}/_kmeans_memory_conv3_bn", layer_ours + "._kmeans_query_conv3_bn"),
        *_conv_bn(rf"{layer}/(?P<m>_pixel_conv1_bn_act|_pixel_v_conv_bn)", layer_ours + ".{m}",
                  kernel=conv1d_to_conv2d),
        *_bn(rf"{layer}/_memory_attention/(?P<n>_batch_norm_similarity|_batch_norm_retrieved_value)",
             layer_ours + "._query_self_attention.{n}"),
        *_bn(rf"{layer}/_kmeans_memory_batch_norm_retrieved_value",
             layer_ours + "._kmeans_query_batch_norm_retrieved_value"),
        *_predictor_rows(f"{layer}/_auxiliary_clustering_predictor/", layer_ours + "._predictor.", "_",
                         class_rows),
        *_predictor_rows("", "predictor._predictor.", "", class_rows),
    ]
    # --- auxiliary semantic predictor (COCO/ADE20K decoder, spec §1.5)
    rows += semantic_decoder_rows("predictor._auxiliary_semantic_predictor.", sem_last)
    return rows


def _cityscapes_semantic_names(converted: dict[str, np.ndarray], origin: dict[str, str],
                               target: Mapping[str, tuple[int, ...]]) -> None:
    """Cityscapes: BD's aux semantic head is an ``nn.Sequential`` (``.0/.1/.2``), spec §1.5/§5.2."""
    sem = "predictor._auxiliary_semantic_predictor."
    if not any(k.startswith(sem + "0.") for k in target):
        return
    for old, new in (("conv_block_0.", "0."), ("conv_block_1.", "1."), ("final_conv.", "2.")):
        for k in [k for k in converted if k.startswith(sem + old)]:
            nk = sem + new + k[len(sem + old):]
            converted[nk] = converted.pop(k)
            origin[nk] = origin.pop(k)


def detect_backbone(names: Sequence[str]) -> str | None:
    """``"resnet50"``, ``"convnext"`` or None, from the TF variable names."""
    if any(n.startswith("encoder/_stem/") for n in names):
        return "resnet50"
    if any(n.startswith("encoder/downsample_layers/") for n in names):
        return "convnext"
    return None


def convert_deeplab2(variables: Mapping[str, np.ndarray], target: torch.nn.Module | Mapping[str, object], *,
                     dataset: str, num_classes: int, backbone: str | None = None, strict: bool = True,
                     semantic_void_last: bool = True, source: str = "deeplab2 checkpoint") -> dict[str, torch.Tensor]:
    """Convert deeplab2 TF variables to our state dict, checked against ``target``.

    Args:
        variables: TF name (with or without ``/.ATTRIBUTES/VARIABLE_VALUE``) -> array,
            e.g. from :func:`kmax_deeplab.checkpoints.tf_reader.load_variables`.
        target: the model, its state dict or name -> shape.
        dataset: ``coco``/``cityscapes``/``ade20k`` (class-head order, spec §5.2).
        num_classes: C.
        backbone: the config's backbone name; if given, a checkpoint of another backbone
            family is refused up front with a clear message.
        strict: require every TF tensor consumed and every target entry produced.
        semantic_void_last: see :func:`deeplab2_rows`.
        source: checkpoint description for messages.

    Returns:
        our name -> tensor (float32; fp16/bf16 variables are widened).

    Raises:
        CheckpointMismatchError: wrong backbone family, leftovers or shape mismatches.
    """
    stripped = {(k[:-len(_SUFFIX)] if k.endswith(_SUFFIX) else k): v for k, v in variables.items()}
    if "encoder/memory_feature" in stripped:  # MaX-DeepLab's memory: another model family
        raise CheckpointMismatchError(f"{source} holds a MaX-DeepLab checkpoint but the model is kMaX-DeepLab "
                                      f"(use a coco/max_deeplab_* config)")
    found = detect_backbone(list(stripped))
    if backbone is not None and found is not None:
        want = "resnet50" if backbone.startswith("resnet50") else "convnext" if "convnext" in backbone else backbone
        if want != found:
            raise CheckpointMismatchError(f"{source} holds a {found} backbone but the model is built "
                                          f"with backbone {backbone!r}")
        if found == "resnet50" and backbone != "resnet50_deeplab2":
            raise CheckpointMismatchError(
                f"{source}: deeplab2's ResNet-50 is a different network from BD's (spec §1.1); "
                f"load it into backbone 'resnet50_deeplab2' (e.g. preset coco/kmax_r50_deeplab2)")
    floats = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in stripped.items()}
    rows = deeplab2_rows(dataset, num_classes, semantic_void_last=semantic_void_last)
    converted, origin, unmatched = apply_rows(floats, rows, ignored=IGNORED)
    shapes = target_shapes(target)
    _cityscapes_semantic_names(converted, origin, shapes)
    return check_against_target(converted, shapes, source=source, unmatched=unmatched, origin=origin,
                                strict=strict)


def load_deeplab2_checkpoint(prefix: str | Path, target: torch.nn.Module | Mapping[str, object], *,
                             dataset: str, num_classes: int, backbone: str | None = None,
                             strict: bool = True, semantic_void_last: bool = True) -> dict[str, torch.Tensor]:
    """Read a TF checkpoint (no TensorFlow needed) and convert it; see :func:`convert_deeplab2`.

    Args:
        prefix: checkpoint prefix (``.../ckpt-150000``), or a folder holding exactly one
            ``*.index`` file (as in the released ``kmax_*.tar.gz`` archives).
    """
    from kmax_deeplab.checkpoints.tf_reader import load_variables

    prefix = resolve_prefix(prefix)
    ignored = [re.compile(p) for p in IGNORED]

    def skip(name: str) -> bool:  # optimizer slots are as large as the model: do not read them
        name = name[:-len(_SUFFIX)] if name.endswith(_SUFFIX) else name
        return any(p.fullmatch(name) for p in ignored)

    variables = load_variables(prefix, skip=skip)
    return convert_deeplab2(variables, target, dataset=dataset, num_classes=num_classes, backbone=backbone,
                            strict=strict, semantic_void_last=semantic_void_last, source=str(prefix))


def resolve_prefix(path: str | Path) -> Path:
    """A TF checkpoint prefix from a prefix, an ``.index``/``.data-*`` file or a folder."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.rglob("*.index"))
        if len(indexes) != 1:
            raise FileNotFoundError(f"{path}: expected exactly one TF checkpoint (*.index) in the folder, "
                                    f"found {len(indexes)}")
        return indexes[0].with_suffix("")
    s = str(path)
    if s.endswith(".index"):
        return Path(s[:-len(".index")])
    if ".data-" in path.name:
        return path.with_name(path.name.split(".data-")[0])
    return path
