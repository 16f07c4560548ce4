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
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

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

__all__ = ["IGNORED", "INIT_CHECKPOINTS", "InitReport", "convert_deeplab2_max", "convert_deeplab2_max_init",
           "deeplab2_max_rows",
           "detect_family", "load_deeplab2_max_checkpoint", "load_deeplab2_max_init"]

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


_PYTORCH_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".safetensors")


def identify_pytorch_file(path: str | Path) -> str:
    """What a PyTorch/pickle weights file holds, from its key names: for one-line refusals."""
    from kmax_deeplab.checkpoints.safe_load import load_weights_file

    try:
        names = list(load_weights_file(path))
    except Exception:  # unreadable: the refusal names the suffix only
        return "PyTorch"
    if any(n.startswith(("rpn_head.", "roi_head.mask_head.")) for n in names):
        return "K-Net (mmdet)"
    if any(n.startswith("sem_seg_head.") for n in names):
        return "kMaX-DeepLab (detectron2)"
    if any(n.startswith(("kernel_head.", "stages.0.updator.")) for n in names):
        return "K-Net (kmax-deeplab)"
    if any(n.startswith(("pixel_decoder.", "predictor.")) for n in names):
        return "kMaX-DeepLab (kmax-deeplab)"
    return "PyTorch"


def _refuse_pytorch_file(path: str | Path, want: str) -> None:
    """One line when a MaX config is given a PyTorch file instead of a deeplab2 TF checkpoint."""
    p = Path(path)
    if p.is_file() and p.suffix in _PYTORCH_SUFFIXES:
        raise CheckpointMismatchError(f"{p} holds a {identify_pytorch_file(p)} checkpoint but the model is {want} "
                                      f"(expected a deeplab2 TF checkpoint: prefix, .index file or archive folder)")


def load_deeplab2_max_checkpoint(prefix: str | Path, target: torch.nn.Module | Mapping[str, object], *,
                                 variant: str, dataset: str = "coco", num_classes: int = 133,
                                 strict: bool = True) -> dict[str, torch.Tensor]:
    """Read a TF checkpoint (no TensorFlow needed) and convert it; see :func:`convert_deeplab2_max`.

    Args:
        prefix: checkpoint prefix, ``.index`` file or a folder holding one checkpoint.
    """
    from kmax_deeplab.checkpoints.tf_reader import load_variables

    _refuse_pytorch_file(prefix, f"max_deeplab_{variant}")
    prefix = resolve_prefix(prefix)
    ignored = [re.compile(p) for p in IGNORED]

    def skip(name: str) -> bool:
        name = name[:-len(_SUFFIX)] if name.endswith(_SUFFIX) else name
        return any(p.fullmatch(name) for p in ignored)

    variables = load_variables(prefix, skip=skip)
    return convert_deeplab2_max(variables, target, variant=variant, dataset=dataset, num_classes=num_classes,
                                strict=strict, source=str(prefix))


#: The published ImageNet initial checkpoints of the MaX-DeepLab axial backbones (deeplab2
#: ``g3doc/projects/imagenet_pretrained_checkpoints.md``, "strong training strategy"; both
#: ImageNet-1K) and the COCO configs' ``initial_checkpoint`` (spec §5 "Initialisation").
INIT_CHECKPOINTS = {
    "s": "https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint/"
         "max_deeplab_s_backbone_imagenet1k_strong_training_strategy.tar.gz",
    "l": "https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint/"
         "max_deeplab_l_backbone_imagenet1k_strong_training_strategy.tar.gz",
}


@dataclass(frozen=True)
class InitReport:
    """What an initial-checkpoint import set and what it left.

    Attributes:
        loaded: our entries set from the checkpoint (the ImageNet-pretrained encoder part).
        left_at_init: our entries that keep the model's initialisation (transformers,
            memory, ``*_extra`` stages, heads, semantic branch).
        skipped: checkpoint entries outside ``encoder/`` (classifier head, optimizer slots,
            counters), not used, as deeplab2's ``expect_partial`` read ignores them.
    """

    loaded: tuple[str, ...]
    left_at_init: tuple[str, ...]
    skipped: tuple[str, ...]

    def summary(self) -> str:
        """One line: counts and the top-level modules left at their initialisation."""
        def group(k: str) -> str:
            p = k.split(".")
            if p[0] != "encoder":
                return p[0]
            if len(p) < 3:
                return k
            return f"{p[0]}.{p[1]}" + (".*_transformer" if p[2].endswith("_transformer") else "")

        groups = sorted({group(k) for k in self.left_at_init})
        return (f"set {len(self.loaded)} backbone entries; left {len(self.left_at_init)} at their initialisation "
                f"({', '.join(groups)}); skipped {len(self.skipped)} checkpoint entries outside encoder/")


def convert_deeplab2_max_init(variables: Mapping[str, np.ndarray], target: torch.nn.Module | Mapping[str, object], *,
                              variant: str, is_backbone: Callable[[str], bool], strict: bool = True,
                              source: str = "deeplab2 initial checkpoint",
                              ) -> tuple[dict[str, torch.Tensor], InitReport]:
    """Convert a deeplab2 ``max_deeplab_{s,l}_backbone`` ImageNet checkpoint (the axial backbone only).

    deeplab2 (``trainer/runner_utils.maybe_load_checkpoint``) reads ``initial_checkpoint``
    into ``tf.train.Checkpoint(**model.checkpoint_items)`` with ``expect_partial()``: the
    ``encoder/...`` entries (or ``backbone/_encoder/...`` in a TF Model Garden file) restore
    the encoder's stem, stages and (L) backbone hourglass decoder, whose object paths equal
    the panoptic encoder's; transformers, memory, ``*_extra`` stages and all heads keep their
    initialisation. This is the same split as deeplab2's backbone learning-rate rule.

    Args:
        variables: TF name (with or without ``/.ATTRIBUTES/VARIABLE_VALUE``) -> array.
        target: the MaX-DeepLab model, its state dict or name -> shape.
        variant: ``"s"`` or ``"l"``, the model's variant.
        is_backbone: our name -> whether it is the ImageNet-pretrained encoder part (the
            family's rule: ``encoder.*`` without ``transformer`` / ``extra`` / ``memory_feature``).
        strict: every ``encoder/`` entry of the checkpoint used and every backbone entry of
            the model produced, equal shapes (entries outside ``encoder/`` are skipped by rule).
        source: checkpoint description for messages.

    Returns:
        (our backbone name -> float32 tensor, :class:`InitReport`).

    Raises:
        CheckpointMismatchError: a full MaX, a kMaX or another variant's checkpoint (one line
            naming what was expected and found), no encoder entries, leftovers or shape
            mismatches.
    """
    if variant not in ("s", "l"):
        raise CheckpointMismatchError(f"MaX-DeepLab variant must be 's' or 'l', got {variant!r}")
    want = f"max_deeplab_{variant}_backbone"
    stripped = {}
    for k, v in variables.items():
        k = k[:-len(_SUFFIX)] if k.endswith(_SUFFIX) else k
        if k.startswith("backbone/_encoder/"):  # TF Model Garden trainer layout (runner_utils)
            k = "encoder/" + k[len("backbone/_encoder/"):]
        stripped[k] = v
    found = detect_family(list(stripped))
    if found is not None:
        hint = "kmax convert --from deeplab2" if found.startswith("max_deeplab") else "a kMaX config"
        raise CheckpointMismatchError(f"{source} holds a full {found} checkpoint but an initial checkpoint of "
                                      f"{want} was expected (use {hint})")
    names = list(stripped)
    if any(n.startswith("encoder/_stem/_conv1_bn_act/") for n in names):
        found = "max_deeplab_s_backbone"
    elif any(n.startswith("encoder/_stem/_conv/") for n in names):
        found = "max_deeplab_l_backbone"
    else:
        raise CheckpointMismatchError(f"{source} is not a deeplab2 axial-backbone checkpoint (no encoder/_stem "
                                      f"entries); expected {want}")
    if found != want:
        raise CheckpointMismatchError(f"{source} holds a {found} checkpoint but the model needs {want}")
    encoder = {k: (v.astype(np.float32, copy=False) if v.dtype.kind == "f" else v) for k, v in stripped.items()
               if k.startswith("encoder/")}
    skipped = tuple(sorted(k for k in stripped if not k.startswith("encoder/")))
    shapes = target_shapes(target)
    backbone = {k: s for k, s in shapes.items() if is_backbone(k)}
    converted, origin, unmatched = apply_rows(encoder, deeplab2_max_rows(variant=variant), ignored=())
    sd = check_against_target(converted, backbone, source=f"{source} (backbone part of MaX-DeepLab-{variant.upper()})",
                              unmatched=unmatched, origin=origin, strict=strict)
    report = InitReport(loaded=tuple(sorted(sd)), left_at_init=tuple(k for k in shapes if k not in sd),
                        skipped=skipped)
    return sd, report


def load_deeplab2_max_init(prefix: str | Path, model: torch.nn.Module, *, variant: str,
                           is_backbone: Callable[[str], bool], strict: bool = True) -> InitReport:
    """Read an initial checkpoint (no TensorFlow needed), convert it and load it into ``model``.

    Only the backbone entries are replaced (``load_state_dict(strict=False)`` after the
    strict conversion of :func:`convert_deeplab2_max_init`); the rest keeps its values.

    Args:
        prefix: checkpoint prefix, ``.index`` file or a folder holding one checkpoint (the
            unpacked ``*_backbone_imagenet1k_strong_training_strategy`` archive).

    Returns:
        The :class:`InitReport`.
    """
    from kmax_deeplab.checkpoints.tf_reader import load_variables

    _refuse_pytorch_file(prefix, f"max_deeplab_{variant} (its max_deeplab_{variant}_backbone initial checkpoint)")
    prefix = resolve_prefix(prefix)
    ignored = [re.compile(p) for p in IGNORED]

    def skip(name: str) -> bool:  # optimizer slots and counters: not even read
        name = name[:-len(_SUFFIX)] if name.endswith(_SUFFIX) else name
        return any(p.fullmatch(name) for p in ignored)

    sd, report = convert_deeplab2_max_init(load_variables(prefix, skip=skip), model, variant=variant,
                                           is_backbone=is_backbone, strict=strict, source=str(prefix))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or set(missing) - set(report.left_at_init):  # cannot happen after the strict check
        raise CheckpointMismatchError(f"{prefix}: model rejected {unexpected[:5]}, lacks {sorted(missing)[:5]}")
    return report
