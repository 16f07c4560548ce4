"""deeplab2 (TensorFlow) MaX-DeepLab checkpoints -> our state dict.

Spec ``max_deeplab.md`` §7 with the corrections of §10 (read off deeplab2 @64bc1c1):
BN statistics keep singleton axes (axial similarity ``[3, 1, 8, 1, 1]``, axial output
``[2, 1, 8, 1, d]``, dual-path value ``[1, 8, 1, 32]``) and are flattened in C order,
which is our (type, head, depth) channel order; ``encoder/memory_feature``,
``.../embeddings`` and ``qkv_kernel`` carry the weight's own name; public head
attributes (``pixel_space_head/conv_block``, ``final_conv``) carry no underscore;
``save_counter``, ``global_step`` and the two optimizers (``optimizer``,
``backbone_optimizer``, all slots) are skipped by rule.

Names: TF ``encoder/_<group>/_block<b>[...]`` -> ``encoder.<group>.block<b>[...]`` with
deeplab2's own (1-based) block numbers; the heads share the kMaX rows
(:func:`kmax_deeplab.checkpoints.deeplab2_tf._predictor_rows`,
:func:`~kmax_deeplab.checkpoints.deeplab2_tf.semantic_decoder_rows`): COCO's class head
is already [things, stuff, void]; the semantic last layer's void channel moves from 0 to
the end.

The conversion is strict: every TF tensor is consumed (or skipped by :data:`IGNORED`) and
every model entry produced, with equal shapes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from kmax_deeplab.checkpoints.deeplab2_tf import (
    IGNORED as _KMAX_IGNORED,
    _bn,
    _conv_bn,
    _predictor_rows,
    _reorder_rows,
    _semantic_void_last,
    _sep_conv,
    by_rank,
    qkv_kernel,
    resolve_prefix,
    semantic_decoder_rows,
    tf_class_order,
)
from kmax_deeplab.checkpoints.table import CheckpointMismatchError, Row, apply_rows, check_against_target, target_shapes

__all__ = ["IGNORED", "convert_deeplab2_max", "deeplab2_max_rows", "detect_family", "load_deeplab2_max_checkpoint"]

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

#: Foreign names dropped on purpose: the kMaX rules plus deeplab2's second optimizer.
IGNORED = tuple(_KMAX_IGNORED) + (r"backbone_optimizer/.*",)

_GROUP = r"encoder/_(?P<g>stage[1-5](?:_extra)?|decoder_stage\d+(?:_extra)?)/_block(?P<b>\d+)"
_OURS = "encoder.{g}.block{b}"


def deeplab2_max_rows(dataset: str = "coco", num_classes: int = 133, *, variant: str = "s") -> list[Row]:
    """The TF -> ours table for MaX-DeepLab-S (``variant="s"``) or -L (``"l"``)."""
    class_rows = _reorder_rows(tf_class_order(dataset, num_classes))
    sem_last = _semantic_void_last(num_classes)
    axial = rf"{_GROUP}/_attention/(?P<a>_height_axis|_width_axis)"
    axial_ours = _OURS + ".attention.{a}"
    dpt = rf"{_GROUP}_transformer"
    dpt_ours = _OURS + "_transformer"
    rows: list[Row] = [
        # stem: Inception (S) or one 3x3 conv (L)
        *_conv_bn(r"encoder/_stem/_(?P<m>conv[123]_bn(?:_act)?)", "encoder.stem.{m}"),
        *_conv_bn(r"encoder/_stem", "encoder.stem", conv=".conv", norm=".norm"),
        # residual / axial blocks
        *_conv_bn(rf"{_GROUP}/_(?P<m>conv[123]_bn(?:_act)?|shortcut)", _OURS + ".{m}"),
        Row(rf"{axial}/qkv_kernel", axial_ours + ".qkv_transform.conv.weight", qkv_kernel),
        Row(rf"{axial}/(?P<r>_query_rpe|_key_rpe|_value_rpe)/embeddings", axial_ours + ".{r}._embeddings.weight"),
        *_bn(rf"{axial}/(?P<n>_batch_norm_qkv|_batch_norm_similarity|_batch_norm_retrieved_output)",
             axial_ours + ".{n}"),
        # dual-path transformers
        *_conv_bn(rf"{dpt}/_(?P<m>(?:memory|pixel)_(?:conv1_bn_act|qkv_conv_bn|conv3_bn)|memory_ffn_conv[12]_bn(?:_act)?)",
                  dpt_ours + "._{m}"),
        *_bn(rf"{dpt}/_(?P<o>memory|pixel)_attention/(?P<n>_batch_norm_similarity|_batch_norm_retrieved_value)",
             dpt_ours + "._{o}_attention.{n}"),
        # decoder fuses, memory, memory heads
        *_conv_bn(r"encoder/_(?P<g>decoder_stage\d+(?:_extra)?)_resized_fuse/_(?P<m>(?:resized|strided)_conv_bn\d+)",
                  "encoder.{g}_resized_fuse.{m}"),
        Row(r"encoder/memory_feature", "encoder.memory_feature"),
        *_conv_bn(r"encoder/_(?P<m>class|mask)_feature_extra", "encoder.{m}_feature_extra"),
        # pixel-space head, mask / class heads, the two head BNs (shared with kMaX)
        *_predictor_rows("", "predictor.", "", class_rows),
    ]
    if variant == "s":
        rows += semantic_decoder_rows("semantic_head.", sem_last)
    else:  # L: the semantic feature is at stride 4; only the head (an nn.Sequential)
        rows += [
            *_sep_conv(r"semantic_head_without_last_layer/_conv1_bn_act", "semantic_head.0", "semantic_head.1"),
            Row(r"semantic_last_layer/kernel", "semantic_head.2.conv.weight", sem_last),
            Row(r"semantic_last_layer/bias", "semantic_head.2.conv.bias", sem_last),
        ]
    return rows


def detect_family(names: Sequence[str]) -> str | None:
    """``"max_deeplab_s"``, ``"max_deeplab_l"``, ``"kmax"`` or None, from TF variable names."""
    names = [n[:-len(_SUFFIX)] if n.endswith(_SUFFIX) else n for n in names]
    if any(n.startswith("transformer_decoder/") for n in names):
        return "kmax"
    if any(n == "encoder/memory_feature" for n in names):
        if any(n.startswith("encoder/_stem/_conv1_bn_act/") for n in names):
            return "max_deeplab_s"
        if any(n.startswith("encoder/_stem/_conv/") for n in names):
            return "max_deeplab_l"
    return None


def convert_deeplab2_max(variables: Mapping[str, np.ndarray], target: torch.nn.Module | Mapping[str, object], *,
                         variant: str, dataset: str = "coco", num_classes: int = 133, strict: bool = True,
                         source: str = "deeplab2 checkpoint") -> dict[str, torch.Tensor]:
    """Convert deeplab2 MaX-DeepLab TF variables to our state dict, checked against ``target``.

    Args:
        variables: TF name (with or without ``/.ATTRIBUTES/VARIABLE_VALUE``) -> array.
        target: the :class:`~kmax_deeplab.modeling.max_deeplab.MaXDeepLab`, its state dict
            or name -> shape.
        variant: ``"s"`` or ``"l"``, the model's variant.
        dataset / num_classes: class-head order (COCO: identity) and C.
        strict: require every TF tensor consumed and every target entry produced.
        source: checkpoint description for messages.

    Returns:
        our name -> float32 tensor.

    Raises:
        CheckpointMismatchError: another family or variant (one line naming both),
            leftovers or shape mismatches.
    """
    if variant not in ("s", "l"):
        raise CheckpointMismatchError(f"MaX-DeepLab variant must be 's' or 'l', got {variant!r}")
    stripped = {(k[:-len(_SUFFIX)] if k.endswith(_SUFFIX) else k): v for k, v in variables.items()}
    found = detect_family(list(stripped))
    want = f"max_deeplab_{variant}"
    if found is not None and found != want:
        raise CheckpointMismatchError(f"{source} holds a {found} checkpoint but the model is {want}")
    if found is None:
        raise CheckpointMismatchError(f"{source} is not a deeplab2 MaX-DeepLab checkpoint (no encoder/memory_feature); "
                                      f"the model is {want}")
    floats = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in stripped.items()}
    converted, origin, unmatched = apply_rows(floats, deeplab2_max_rows(dataset, num_classes, variant=variant),
                                              ignored=IGNORED)
    return check_against_target(converted, target_shapes(target), source=source, unmatched=unmatched,
                                origin=origin, strict=strict)


def load_deeplab2_max_checkpoint(prefix: str | Path, target: torch.nn.Module | Mapping[str, object], *,
                                 variant: str, dataset: str = "coco", num_classes: int = 133,
                                 strict: bool = True) -> dict[str, torch.Tensor]:
    """Read a TF checkpoint (no TensorFlow needed) and convert it; see :func:`convert_deeplab2_max`.

    Args:
        prefix: checkpoint prefix, ``.index`` file or a folder holding one checkpoint.
    """
    from kmax_deeplab.checkpoints.tf_reader import load_variables

    prefix = resolve_prefix(prefix)
    ignored = [re.compile(p) for p in IGNORED]

    def skip(name: str) -> bool:
        name = name[:-len(_SUFFIX)] if name.endswith(_SUFFIX) else name
        return any(p.fullmatch(name) for p in ignored)

    variables = load_variables(prefix, skip=skip)
    return convert_deeplab2_max(variables, target, variant=variant, dataset=dataset, num_classes=num_classes,
                                strict=strict, source=str(prefix))
