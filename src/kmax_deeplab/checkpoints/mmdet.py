"""Original K-Net (mmdet 2.x) checkpoints <-> our state dict (knet.md §10).

The released ``.pth`` files are ``{"state_dict": name -> Tensor, "meta": {...}}``, read with
``torch.load(weights_only=True)``. Both directions are tables of renames (tensors are
identical, no transposes):

=========================================================  ===============================================
mmdet (ZwwWayne/K-Net)                                     ours (:class:`kmax_deeplab.modeling.knet.KNet`)
=========================================================  ===============================================
``backbone.conv1.weight``, ``backbone.bn1.*``              ``backbone.stem.conv1.weight``, ``….norm.*``
``backbone.layer{s}.{b}.conv{k}.weight`` / ``bn{k}.*``     ``backbone.res{s+1}.{b}.conv{k}.weight`` / ``.norm.*``
``backbone.layer{s}.{b}.downsample.{0,1}.*``               ``backbone.res{s+1}.{b}.shortcut.{weight,norm.*}``
``backbone.layer{s}.{b}.conv2.conv_offset.*`` (DCN)        ``backbone.res{s+1}.{b}.conv2.conv_offset.*``
``backbone.{patch_embed,stages,norm0..3}.*`` (Swin)        the same names (our Swin uses mmdet's layout)
``backbone.stages.….attn.w_msa.relative_position_index``   dropped (derived; re-created on export)
``neck.lateral_convs.{i}.conv.*``, ``neck.fpn_convs.…``    ``neck.lateral_convs.{i}.*``, ``neck.output_convs.{i}.*``
``rpn_head.localization_fpn.convs_all_levels.{L}.conv{j}`` ``kernel_head.localization_fpn.levels.{L}.{2j}``
``rpn_head.localization_fpn.conv_pred`` / ``aux_convs.0``  ``kernel_head.localization_fpn.loc_out`` / ``sem_out``
``rpn_head.loc_convs.0`` / ``seg_convs.0``                 ``kernel_head.loc_conv`` / ``seg_conv``
``….gn.*`` (mmcv ``ConvModule``)                           ``….norm.*``
``rpn_head.{init_kernels,conv_seg}.*``                     ``kernel_head.{init_kernels,conv_seg}.*``
``roi_head.mask_head.{i}.attention.attn.*``                ``stages.{i}.attention.*``
``roi_head.mask_head.{i}.kernel_update_conv.*``            ``stages.{i}.updator.*``
``roi_head.mask_head.{i}.feat_transform.conv.*``           ``stages.{i}.feat_transform.*``
``roi_head.mask_head.{i}.ffn.layers.0.0.*`` / ``layers.1`` ``stages.{i}.ffn.fc1.*`` / ``fc2.*``
``roi_head.mask_head.{i}.{other}``                         ``stages.{i}.{other}``
=========================================================  ===============================================
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
from kmax_deeplab.checkpoints.table import (
    CheckpointMismatchError,
    Row,
    apply_rows,
    check_against_target,
    target_shapes,
)

__all__ = ["MMDET_TO_OURS", "OURS_TO_MMDET", "load_mmdet_checkpoint", "mmdet_to_ours", "ours_to_mmdet",
           "save_mmdet"]

_BN = BN_PARAM
_LFPN = "rpn_head.localization_fpn"
#: Update-stage entries kept under their own names (norms, FCs).
_STAGE_OTHER = r"(?:attention_norm|ffn_norm|cls_fcs|fc_cls|mask_fcs|fc_mask)\..+"
#: Swin backbone entries (mmdet ``SwinTransformer`` names, the same as ours).
_SWIN = r"backbone\.(?P<r>(?:patch_embed|stages)\..+|norm[0-3]\.(?:weight|bias))"
#: mmdet stores Swin's relative_position_index buffers; ours derives them.
_SWIN_DERIVED = (r"backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_index",)

#: mmdet -> ours. The first matching row wins.
MMDET_TO_OURS = (
    Row(r"backbone\.conv1\.weight", "backbone.stem.conv1.weight"),
    Row(rf"backbone\.bn1\.{_BN}", "backbone.stem.conv1.norm.{p}"),
    *resnet_rows("backbone."),
    Row(r"backbone\.layer(?P<s>\d)\.(?P<b>\d+)\.conv2\.conv_offset\.(?P<p>weight|bias)",
        "backbone.res{s:+1}.{b}.conv2.conv_offset.{p}"),
    Row(_SWIN, "backbone.{r}"),
    Row(r"neck\.lateral_convs\.(?P<i>\d)\.conv\.(?P<p>weight|bias)", "neck.lateral_convs.{i}.{p}"),
    Row(r"neck\.fpn_convs\.(?P<i>\d)\.conv\.(?P<p>weight|bias)", "neck.output_convs.{i}.{p}"),
    Row(rf"{_LFPN}\.convs_all_levels\.(?P<L>\d)\.conv(?P<j>\d)\.conv\.weight",
        "kernel_head.localization_fpn.levels.{L}.{j:*2}.conv.weight"),
    Row(rf"{_LFPN}\.convs_all_levels\.(?P<L>\d)\.conv(?P<j>\d)\.gn\.(?P<p>weight|bias)",
        "kernel_head.localization_fpn.levels.{L}.{j:*2}.norm.{p}"),
    Row(rf"{_LFPN}\.conv_pred\.conv\.weight", "kernel_head.localization_fpn.loc_out.conv.weight"),
    Row(rf"{_LFPN}\.conv_pred\.gn\.(?P<p>weight|bias)", "kernel_head.localization_fpn.loc_out.norm.{p}"),
    Row(rf"{_LFPN}\.aux_convs\.0\.conv\.weight", "kernel_head.localization_fpn.sem_out.conv.weight"),
    Row(rf"{_LFPN}\.aux_convs\.0\.gn\.(?P<p>weight|bias)", "kernel_head.localization_fpn.sem_out.norm.{p}"),
    Row(r"rpn_head\.(?P<m>loc|seg)_convs\.0\.conv\.weight", "kernel_head.{m}_conv.conv.weight"),
    Row(r"rpn_head\.(?P<m>loc|seg)_convs\.0\.gn\.(?P<p>weight|bias)", "kernel_head.{m}_conv.norm.{p}"),
    Row(r"rpn_head\.(?P<r>init_kernels\.weight|conv_seg\.weight|conv_seg\.bias)", "kernel_head.{r}"),
    *kernel_update_rows("roi_head.mask_head", _STAGE_OTHER),
)

#: ours -> mmdet: the inverse of :data:`MMDET_TO_OURS`.
OURS_TO_MMDET = (
    Row(r"backbone\.stem\.conv1\.weight", "backbone.conv1.weight"),
    Row(rf"backbone\.stem\.conv1\.norm\.{_BN}", "backbone.bn1.{p}"),
    *resnet_rows_inverse("backbone."),
    Row(r"backbone\.res(?P<s>\d)\.(?P<b>\d+)\.conv2\.conv_offset\.(?P<p>weight|bias)",
        "backbone.layer{s:-1}.{b}.conv2.conv_offset.{p}"),
    Row(_SWIN, "backbone.{r}"),
    Row(r"neck\.lateral_convs\.(?P<i>\d)\.(?P<p>weight|bias)", "neck.lateral_convs.{i}.conv.{p}"),
    Row(r"neck\.output_convs\.(?P<i>\d)\.(?P<p>weight|bias)", "neck.fpn_convs.{i}.conv.{p}"),
    Row(r"kernel_head\.localization_fpn\.levels\.(?P<L>\d)\.(?P<j>[02468])\.conv\.weight",
        _LFPN + ".convs_all_levels.{L}.conv{j://2}.conv.weight"),
    Row(r"kernel_head\.localization_fpn\.levels\.(?P<L>\d)\.(?P<j>[02468])\.norm\.(?P<p>weight|bias)",
        _LFPN + ".convs_all_levels.{L}.conv{j://2}.gn.{p}"),
    Row(r"kernel_head\.localization_fpn\.loc_out\.conv\.weight", _LFPN + ".conv_pred.conv.weight"),
    Row(r"kernel_head\.localization_fpn\.loc_out\.norm\.(?P<p>weight|bias)", _LFPN + ".conv_pred.gn.{p}"),
    Row(r"kernel_head\.localization_fpn\.sem_out\.conv\.weight", _LFPN + ".aux_convs.0.conv.weight"),
    Row(r"kernel_head\.localization_fpn\.sem_out\.norm\.(?P<p>weight|bias)", _LFPN + ".aux_convs.0.gn.{p}"),
    Row(r"kernel_head\.(?P<m>loc|seg)_conv\.conv\.weight", "rpn_head.{m}_convs.0.conv.weight"),
    Row(r"kernel_head\.(?P<m>loc|seg)_conv\.norm\.(?P<p>weight|bias)", "rpn_head.{m}_convs.0.gn.{p}"),
    Row(r"kernel_head\.(?P<r>init_kernels\.weight|conv_seg\.weight|conv_seg\.bias)", "rpn_head.{r}"),
    *kernel_update_rows_inverse("roi_head.mask_head", _STAGE_OTHER),
)


def mmdet_to_ours(state: Mapping[str, np.ndarray | torch.Tensor], target: torch.nn.Module | Mapping[str, object], *,
                  strict: bool = True, source: str = "mmdet K-Net checkpoint") -> dict[str, torch.Tensor]:
    """Rename an original K-Net state dict to ours and check it against ``target``.

    Args:
        state: mmdet name -> tensor (the ``"state_dict"`` entry of a released ``.pth``).
        target: our :class:`~kmax_deeplab.modeling.knet.KNet`, its state dict, or name -> shape.
        strict: every mmdet entry used and every target entry produced.
        source: checkpoint description for messages.

    Returns:
        our name -> tensor.

    Raises:
        CheckpointMismatchError: leftovers on either side, or shape mismatches (a
            133-class panoptic head into an 80-class instance model names both shapes).
    """
    state = to_numpy(state)
    _check_family_and_task(state, target_shapes(target), source)
    converted, origin, unmatched = apply_rows(state, MMDET_TO_OURS, ignored=_SWIN_DERIVED)
    return check_against_target(converted, target_shapes(target), source=source, unmatched=unmatched,
                                origin=origin, strict=strict)


def _check_family_and_task(state: Mapping[str, np.ndarray], target: Mapping[str, tuple], source: str) -> None:
    """One-line refusal of another family's checkpoint, of the other K-Net task / class count, or of a
    Swin backbone into a ResNet model and back."""
    seg = state.get("rpn_head.conv_seg.weight")
    if seg is None or "roi_head.mask_head.0.fc_cls.weight" not in state:
        sample = ", ".join(sorted(state)[:3])
        raise CheckpointMismatchError(f"{source} is not an mmdet K-Net checkpoint (no rpn_head.conv_seg / "
                                      f"roi_head.mask_head.0.fc_cls; found keys like {sample})")
    ours = target.get("kernel_head.conv_seg.weight")
    if ours is not None and tuple(seg.shape)[0] != tuple(ours)[0]:
        def kind(c: int) -> str:
            return "panoptic" if c == 133 else "instance" if c == 80 else "custom"
        found, expected = int(seg.shape[0]), int(ours[0])
        article = "an" if kind(expected) == "instance" else "a"
        raise CheckpointMismatchError(f"{source} holds a {kind(found)} K-Net with {found} classes, but the model "
                                      f"is {article} {kind(expected)} K-Net with {expected} classes; use the matching "
                                      f"config (panoptic 133 / instance 80)")
    found_swin = "backbone.patch_embed.projection.weight" in state
    ours_swin = "backbone.patch_embed.projection.weight" in target
    if found_swin != ours_swin:
        def name(swin: bool) -> str:
            return "Swin" if swin else "ResNet"
        raise CheckpointMismatchError(f"{source} holds a K-Net with a {name(found_swin)} backbone, but the model has a "
                                      f"{name(ours_swin)} backbone; use the matching config (e.g. "
                                      f"{'coco/knet_swin_l_fpn_ms3x' if found_swin else 'coco/knet_r50_fpn_1x'})")


def ours_to_mmdet(state: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """Rename our K-Net state dict to the original mmdet names (tensors unchanged); a Swin backbone
    gets the ``relative_position_index`` buffers mmdet's ``WindowMSA`` stores (loaded strictly there).

    Raises:
        CheckpointMismatchError: a key no row converts (not a K-Net state dict).
    """
    return export_openmmlab(state, OURS_TO_MMDET, "mmdet")


def load_mmdet_checkpoint(path: str | Path, target: torch.nn.Module | Mapping[str, object], *,
                          strict: bool = True) -> dict[str, torch.Tensor]:
    """Read a released K-Net ``.pth`` safely and convert it (see :func:`mmdet_to_ours`)."""
    return mmdet_to_ours(load_weights_file(path), target, strict=strict, source=str(path))


def save_mmdet(state: Mapping[str, np.ndarray | torch.Tensor], path: str | Path, *,
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write our state dict as an original-layout K-Net ``.pth`` (``{"state_dict", "meta"}``), atomically."""
    return write_openmmlab_pth(ours_to_mmdet(state), path, meta)
