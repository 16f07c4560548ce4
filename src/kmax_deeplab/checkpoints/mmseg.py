"""Original semantic K-Net (mmsegmentation 0.x) checkpoints <-> our state dict.

The released ADE20K ``.pth`` files are ``{"state_dict": name -> Tensor, "meta": {...}}``
(mmseg ``EncoderDecoder`` with K-Net's ``IterativeDecodeHead``), read with
``torch.load(weights_only=True)``. Both directions are tables of renames (tensors identical):

==============================================================  ==============================================
mmseg (ZwwWayne/K-Net ``knet/seg``, mmseg 0.30)                 ours (``modeling/knet_semantic``)
==============================================================  ==============================================
``backbone.stem.{0,3,6}.weight`` / ``stem.{1,4,7}.*``           ``backbone.stem.conv{1,2,3}.weight`` / ``.norm.*``
``backbone.layer{s}.{b}.conv{k}.weight`` / ``bn{k}.*``          ``backbone.res{s+1}.{b}.conv{k}.weight`` / ``.norm.*``
``backbone.layer{s}.{b}.downsample.{0,1}.*``                    ``backbone.res{s+1}.{b}.shortcut.{weight,norm.*}``
``decode_head.kernel_generate_head.{r}``                        ``decode_head.{r}`` (mmseg's head names)
``decode_head.kernel_update_head.{i}.attention.attn.*``         ``stages.{i}.attention.*``
``decode_head.kernel_update_head.{i}.kernel_update_conv.*``     ``stages.{i}.updator.*``
``decode_head.kernel_update_head.{i}.feat_transform.conv.*``    ``stages.{i}.feat_transform.*``
``decode_head.kernel_update_head.{i}.ffn.layers.{0.0,1}.*``     ``stages.{i}.ffn.{fc1,fc2}.*``
``decode_head.kernel_update_head.{i}.{other}``                  ``stages.{i}.{other}``
``auxiliary_head.{r}``                                          ``auxiliary_head.{r}``
``backbone.{patch_embed,stages,norm0..3}.*`` (mmseg 0.30 Swin)   the same (our Swin uses mmdet/mmseg names)
``backbone.layers.…`` (official Swin, K-Net's seg configs)      via ``checkpoints.swin.OFFICIAL_TO_OURS``
``backbone.….relative_position_index`` / ``attn_mask``          dropped (derived; re-created on export)
==============================================================  ==============================================

Swin: the mmseg 0.30 K-Net Swin configs (and their released files) build mmseg's
``SwinTransformer``, whose names are ours; the K-Net repo's own ``configs/seg/knet/*swin*`` name the
Swin-Transformer-Semantic-Segmentation class, in the official layout, which is converted too.
Exports use the mmseg 0.30 names.

A checkpoint of another family (mmdet K-Net, a plain mmseg model), of another decode head or
class count is refused in one line naming what it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from kmax_deeplab.checkpoints.detectron2 import to_numpy
from kmax_deeplab.checkpoints.openmmlab import (
    BN_PARAM,
    export_openmmlab,
    kernel_update_rows,
    kernel_update_rows_inverse,
    resnet_rows,
    resnet_rows_inverse,
    write_openmmlab_pth,
)
from kmax_deeplab.checkpoints.safe_load import load_weights_file
from kmax_deeplab.checkpoints.swin import OFFICIAL_TO_OURS
from kmax_deeplab.checkpoints.table import (
    CheckpointMismatchError,
    Row,
    apply_rows,
    check_against_target,
    target_shapes,
)

__all__ = ["MMSEG_TO_OURS", "OURS_TO_MMSEG", "decode_head_kind", "load_mmseg_checkpoint", "mmseg_to_ours",
           "ours_to_mmseg", "save_mmseg"]

_BN = BN_PARAM
_GEN = "decode_head.kernel_generate_head"
_UPD = "decode_head.kernel_update_head"
_STAGE_OTHER = r"(?:attention_norm|ffn_norm|mask_fcs|fc_mask)\..+"
#: Swin backbone entries in mmseg 0.30's names (= ours).
_SWIN = r"backbone\.(?P<r>(?:patch_embed|stages)\..+|norm[0-3]\.(?:weight|bias))"
#: Derived Swin buffers both Swin layouts store.
_SWIN_DERIVED = (r"backbone\..*\.relative_position_index", r"backbone\..*\.attn_mask")

#: The official Swin layout under ``backbone.`` (K-Net's own seg configs), before the identity row.
_OFFICIAL_SWIN = tuple(Row(r"backbone\." + r.pattern, "backbone." + r.template, r.transform) for r in OFFICIAL_TO_OURS)

#: mmseg -> ours. The first matching row wins.
MMSEG_TO_OURS = (
    Row(r"backbone\.stem\.0\.weight", "backbone.stem.conv1.weight"),
    Row(r"backbone\.stem\.3\.weight", "backbone.stem.conv2.weight"),
    Row(r"backbone\.stem\.6\.weight", "backbone.stem.conv3.weight"),
    Row(rf"backbone\.stem\.1\.{_BN}", "backbone.stem.conv1.norm.{p}"),
    Row(rf"backbone\.stem\.4\.{_BN}", "backbone.stem.conv2.norm.{p}"),
    Row(rf"backbone\.stem\.7\.{_BN}", "backbone.stem.conv3.norm.{p}"),
    *resnet_rows("backbone."),
    *_OFFICIAL_SWIN,
    Row(_SWIN, "backbone.{r}"),
    Row(rf"decode_head\.kernel_generate_head\.(?P<r>.+)", "decode_head.{r}"),
    *kernel_update_rows(_UPD, _STAGE_OTHER),
    Row(r"auxiliary_head\.(?P<r>.+)", "auxiliary_head.{r}"),
)

#: ours -> mmseg: the inverse of :data:`MMSEG_TO_OURS`.
OURS_TO_MMSEG = (
    Row(r"backbone\.stem\.conv1\.weight", "backbone.stem.0.weight"),
    Row(r"backbone\.stem\.conv2\.weight", "backbone.stem.3.weight"),
    Row(r"backbone\.stem\.conv3\.weight", "backbone.stem.6.weight"),
    Row(rf"backbone\.stem\.conv1\.norm\.{_BN}", "backbone.stem.1.{p}"),
    Row(rf"backbone\.stem\.conv2\.norm\.{_BN}", "backbone.stem.4.{p}"),
    Row(rf"backbone\.stem\.conv3\.norm\.{_BN}", "backbone.stem.7.{p}"),
    *resnet_rows_inverse("backbone."),
    Row(_SWIN, "backbone.{r}"),
    Row(r"decode_head\.(?P<r>.+)", _GEN + ".{r}"),
    *kernel_update_rows_inverse(_UPD, _STAGE_OTHER),
    Row(r"auxiliary_head\.(?P<r>.+)", "auxiliary_head.{r}"),
)

_HEAD_NAMES = {"upernet": "UPerNet", "deeplabv3": "DeepLabv3", "pspnet": "PSPNet", "fcn": "FCN"}


def decode_head_kind(names: Any, prefix: str) -> str | None:
    """``upernet`` / ``deeplabv3`` / ``pspnet`` / ``fcn`` from the state-dict names under ``prefix``
    (``lateral_convs``, ``aspp_modules``, ``psp_modules``, ``convs``), or None."""
    names = [n[len(prefix):] for n in names if n.startswith(prefix)]
    for kind, marker in (("upernet", "lateral_convs."), ("deeplabv3", "aspp_modules."), ("pspnet", "psp_modules."),
                         ("fcn", "convs.")):
        if any(n.startswith(marker) for n in names):
            return kind
    return None


def _check_family(state: Mapping[str, np.ndarray], target: Mapping[str, tuple], source: str) -> None:
    """One-line refusal of another family's checkpoint, another decode head, class count or backbone kind."""
    seg = state.get(f"{_GEN}.conv_seg.weight")
    if seg is None or not any(k.startswith(f"{_UPD}.0.") for k in state):
        sample = ", ".join(sorted(state)[:3])
        hint = (" (an mmdet K-Net: use --from mmdet with a coco/knet_* config)" if "rpn_head.conv_seg.weight" in state
                else "")
        raise CheckpointMismatchError(f"{source} is not an mmseg K-Net semantic checkpoint (no {_GEN}.conv_seg / "
                                      f"{_UPD}.0; found keys like {sample}){hint}")
    found, expected = decode_head_kind(state, f"{_GEN}."), decode_head_kind(target, "decode_head.")
    if expected is not None and found != expected:
        raise CheckpointMismatchError(
            f"{source} holds a K-Net + {_HEAD_NAMES.get(found or '', found)}, but the model is K-Net + "
            f"{_HEAD_NAMES[expected]}; use model.decode_head={found} (e.g. ade20k/knet_r50_d8_{found}_512)")
    found_swin = any(k.startswith(("backbone.patch_embed.", "backbone.layers.0.blocks.")) for k in state)
    ours_swin = "backbone.patch_embed.projection.weight" in target
    if any(k.startswith("backbone.") for k in target) and found_swin != ours_swin:
        def name(swin: bool) -> str:
            return "Swin" if swin else "ResNet"
        raise CheckpointMismatchError(f"{source} holds a {name(found_swin)} backbone, but the model has a "
                                      f"{name(ours_swin)} backbone; use the matching config (model.backbone)")
    ours = target.get("decode_head.conv_seg.weight")
    if ours is not None and tuple(seg.shape)[0] != tuple(ours)[0]:
        raise CheckpointMismatchError(f"{source} has {int(seg.shape[0])} classes, but the model has {int(ours[0])} "
                                      f"(model.num_classes / model.num_queries)")


def mmseg_to_ours(state: Mapping[str, np.ndarray | torch.Tensor], target: torch.nn.Module | Mapping[str, object], *,
                  strict: bool = True, source: str = "mmseg K-Net checkpoint") -> dict[str, torch.Tensor]:
    """Rename an original semantic K-Net state dict to ours and check it against ``target``.

    Args:
        state: mmseg name -> tensor (the ``"state_dict"`` entry of a released ``.pth``).
        target: our :class:`~kmax_deeplab.modeling.knet_semantic.KNetSemantic`, its state dict,
            or name -> shape.
        strict: every mmseg entry used and every target entry produced.
        source: checkpoint description for messages.

    Returns:
        our name -> tensor.

    Raises:
        CheckpointMismatchError: another family's checkpoint, another decode head or class
            count (one line each); leftovers on either side or shape mismatches.
    """
    state = to_numpy(state)
    shapes = target_shapes(target)
    _check_family(state, shapes, source)
    converted, origin, unmatched = apply_rows(state, MMSEG_TO_OURS, ignored=_SWIN_DERIVED)
    return check_against_target(converted, shapes, source=source, unmatched=unmatched, origin=origin, strict=strict)


def ours_to_mmseg(state: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """Rename our semantic K-Net state dict to the original mmseg names (tensors unchanged); a Swin
    backbone also gets the ``relative_position_index`` buffers mmseg's ``WindowMSA`` stores.

    Raises:
        CheckpointMismatchError: a key no row converts (not a semantic K-Net state dict).
    """
    return export_openmmlab(state, OURS_TO_MMSEG, "mmseg")


def load_mmseg_checkpoint(path: str | Path, target: torch.nn.Module | Mapping[str, object], *,
                          strict: bool = True) -> dict[str, torch.Tensor]:
    """Read a released semantic K-Net ``.pth`` safely and convert it (see :func:`mmseg_to_ours`)."""
    return mmseg_to_ours(load_weights_file(path), target, strict=strict, source=str(path))


def save_mmseg(state: Mapping[str, np.ndarray | torch.Tensor], path: str | Path, *,
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write our state dict as an original-layout semantic K-Net ``.pth`` (``{"state_dict", "meta"}``), atomically."""
    return write_openmmlab_pth(ours_to_mmseg(state), path, meta)
