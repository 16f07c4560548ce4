"""ImageNet-pretrained backbones -> our backbone state dict (keys without ``backbone.``).

Supported files (read safely by :func:`~kmax_deeplab.checkpoints.safe_load.load_weights_file`):

- torchvision ResNet-50 ``.pth``: ``conv1``/``bn1``/``layer{L}.{b}.conv{k}``/``bn{k}``/
  ``downsample.{0,1}`` -> ``stem.conv1``/``stem.conv1.norm``/``res{L+1}.{b}.conv{k}``/
  ``.conv{k}.norm``/``shortcut``/``shortcut.norm``; ``fc.*`` dropped.
- mmcv / mmseg ResNetV1c (``open-mmlab://resnetv1c50``, ``resnet50_v1c-2cccc1ad.pth``, the
  initialisation of mmseg's and K-Net's semantic configs): the deep stem ``stem.{0,3,6}`` convs
  and ``stem.{1,4,7}`` BNs -> ``stem.conv{1,2,3}`` / ``.norm``, then torchvision's
  ``layer{L}`` names as above; ``fc.*`` dropped.
- detectron2 ``R-50.pkl`` (torchvision converted by detectron2's script): already
  ``stem.conv1``/``res2.0.conv1`` names, with ``.norm``; ``linear.*``/``fc.*`` dropped.
- official FB ConvNeXt (``{"model": ...}``, e.g. 22k->1k 384): same names as ours; the final
  ``norm.*`` and the classifier ``head.*`` are dropped, as BD does.
- official Swin (microsoft/Swin-Transformer ``{"model": ...}``, e.g.
  ``swin_large_patch4_window7_224_22k.pth``): converted by :mod:`kmax_deeplab.checkpoints.swin`
  (mmdet's ``swin_converter`` mapping); ``head.*``, the final ``norm.*`` and the
  ``attn_mask`` / ``relative_position_index`` buffers dropped; ``norm{0..3}`` keep their
  initialisation (the file has none).
- timm ConvNeXt: ``stem.{0,1}``, ``stages.{i}.downsample.{0,1}``, ``stages.{i}.blocks.{j}.
  {conv_dw, norm, mlp.fc1, mlp.fc2, gamma}`` -> ours; ``head.*``/``norm_pre.*`` dropped.

Deformable-conv offset branches (``res{s}.{b}.conv2.conv_offset.*`` of a ResNet with ``dcn``)
are not in any ImageNet file: they keep their zero initialisation (the layer starts as the plain
3×3 conv whose weight the file gives), as mmdet's ``load_checkpoint`` leaves them.

Both ResNet backbones (``resnet50`` and ``resnet50_deeplab2``) use these names, so either
accepts an ImageNet ResNet-50 (the deeplab2 one was pretrained with TF's own ResNet; a
torchvision initialisation of it is only an initialisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from kmax_deeplab.checkpoints.detectron2 import to_numpy
from kmax_deeplab.checkpoints.openmmlab import BN_PARAM, resnet_rows
from kmax_deeplab.checkpoints.safe_load import load_weights_file
from kmax_deeplab.checkpoints.table import (
    CheckpointMismatchError,
    Row,
    apply_rows,
    check_against_target,
    target_shapes,
)

__all__ = ["IMAGENET_TABLES", "detect_imagenet_format", "convert_imagenet", "import_imagenet_backbone",
           "load_imagenet_backbone"]

_P = BN_PARAM

_LAYERS = resnet_rows(stage="[1-4]", conv="[123]")

IMAGENET_TABLES: dict[str, tuple[tuple[Row, ...], tuple[str, ...]]] = {
    "mmcv_resnet_v1c": ((
        *(Row(rf"stem\.{3 * i}\.weight", f"stem.conv{i + 1}.weight") for i in range(3)),
        *(Row(rf"stem\.{3 * i + 1}\.{_P}", f"stem.conv{i + 1}.norm.{{p}}") for i in range(3)),
        *_LAYERS,
    ), (r"fc\..*",)),
    "torchvision_resnet": ((
        Row(r"conv1\.weight", "stem.conv1.weight"),
        Row(rf"bn1\.{_P}", "stem.conv1.norm.{p}"),
        *_LAYERS,
    ), (r"fc\..*",)),
    "detectron2_resnet": ((
        Row(r"(?P<r>stem\.conv1\..+)", "{r}"),
        Row(r"(?P<r>res[2-5]\.\d+\.(?:conv[123]|shortcut)\..+)", "{r}"),
    ), (r"fc\..*", r"linear\..*")),
    "fb_convnext": ((
        Row(r"(?P<r>downsample_layers\.\d\.[01]\.(?:weight|bias))", "{r}"),
        Row(r"(?P<r>stages\.\d+\.\d+\.(?:gamma|(?:dwconv|norm|pwconv1|pwconv2)\.(?:weight|bias)))", "{r}"),
    ), (r"norm\.(?:weight|bias)", r"head\..*")),
    "timm_convnext": ((
        Row(r"stem\.(?P<k>[01])\.(?P<p>weight|bias)", "downsample_layers.0.{k}.{p}"),
        Row(r"stages\.(?P<i>[1-9])\.downsample\.(?P<k>[01])\.(?P<p>weight|bias)", "downsample_layers.{i}.{k}.{p}"),
        Row(r"stages\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\.conv_dw\.(?P<p>weight|bias)", "stages.{i}.{j}.dwconv.{p}"),
        Row(r"stages\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\.norm\.(?P<p>weight|bias)", "stages.{i}.{j}.norm.{p}"),
        Row(r"stages\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\.mlp\.fc(?P<k>[12])\.(?P<p>weight|bias)",
            "stages.{i}.{j}.pwconv{k}.{p}"),
        Row(r"stages\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\.gamma", "stages.{i}.{j}.gamma"),
    ), (r"head\..*", r"norm_pre\..*")),
}


def detect_imagenet_format(names: list[str]) -> str:
    """Which table of :data:`IMAGENET_TABLES` fits these key names.

    Raises:
        CheckpointMismatchError: none does (message lists a few keys).
    """
    s = set(names)
    if "stem.0.weight" in s and any(n.startswith("layer1.") for n in s):
        return "mmcv_resnet_v1c"
    if any(n.startswith("layer1.") for n in s):
        return "torchvision_resnet"
    if any(n.startswith(("stem.conv1.", "res2.")) for n in s):
        return "detectron2_resnet"
    if any(n.startswith("downsample_layers.") for n in s):
        return "fb_convnext"
    if any(n.startswith("stem.0.") for n in s) and any(".blocks." in n for n in s):
        return "timm_convnext"
    raise CheckpointMismatchError(f"unrecognised ImageNet checkpoint layout (first keys: {sorted(s)[:8]}); "
                                  f"supported: torchvision/detectron2 ResNet-50, mmcv ResNetV1c, FB/timm ConvNeXt, official Swin")


def convert_imagenet(state: Mapping[str, np.ndarray | torch.Tensor], target: torch.nn.Module | Mapping[str, object],
                     *, strict: bool = True, source: str = "ImageNet checkpoint") -> dict[str, torch.Tensor]:
    """Convert an ImageNet backbone state dict to our backbone's names, checked against ``target``.

    Args:
        state: name -> tensor; a ``backbone.`` or ``module.`` prefix is removed first.
        target: our backbone module (``model.backbone``), its state dict or name -> shape.
        strict: every non-ignored entry used, every backbone entry produced.

    Returns:
        backbone state dict (no ``backbone.`` prefix): ``model.backbone.load_state_dict(sd)``.

    Raises:
        CheckpointMismatchError: unknown layout, leftovers or shape mismatches
            (e.g. a ResNet-50 into a ConvNeXt backbone).
    """
    from kmax_deeplab.checkpoints.swin import is_official_swin, official_to_ours

    arrays = {}
    for k, v in to_numpy(state).items():
        for pre in ("module.", "backbone."):
            if k.startswith(pre):
                k = k[len(pre):]
        arrays[k] = v
    if is_official_swin(arrays):
        return official_to_ours(arrays, target, classifier=True, strict=strict, source=f"{source} (official_swin)")
    fmt = detect_imagenet_format(list(arrays))
    rows, ignored = IMAGENET_TABLES[fmt]
    converted, origin, unmatched = apply_rows(arrays, rows, ignored=ignored)
    shapes = {k: v for k, v in target_shapes(target).items() if not _is_new_layer(k)}
    return check_against_target(converted, shapes, source=f"{source} ({fmt})",
                                unmatched=unmatched, origin=origin, strict=strict)


def _is_new_layer(name: str) -> bool:
    """Backbone entries no ImageNet file has: deformable-conv offset branches (module docstring)."""
    return ".conv_offset." in name


def load_imagenet_backbone(path: str | Path, backbone: torch.nn.Module, *, strict: bool = True) -> dict[str, torch.Tensor]:
    """Read an ImageNet checkpoint safely, convert it and load it into ``backbone`` (strictly,
    except for the deformable-conv offset branches, which keep their initialisation).

    Returns:
        The converted backbone state dict.
    """
    from kmax_deeplab.checkpoints.swin import is_official_swin, load_swin_imagenet

    state = load_weights_file(path)
    if is_official_swin([k.removeprefix("module.").removeprefix("backbone.") for k in state]):
        return load_swin_imagenet(path, backbone, strict=strict)
    sd = convert_imagenet(state, backbone, strict=strict, source=str(path))
    missing, unexpected = backbone.load_state_dict(sd, strict=False)
    if strict and (unexpected or any(not _is_new_layer(k) for k in missing)):  # convert_imagenet checked it
        raise CheckpointMismatchError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return sd


def import_imagenet_backbone(src: str | Path, model: torch.nn.Module, cfg: object = None,
                             strict: bool = True) -> dict[str, torch.Tensor]:
    """The ``imagenet`` importer of the families whose ``model.backbone`` takes one of the files
    above (kMaX, K-Net, the semantic K-Net): :func:`load_imagenet_backbone` into
    ``model.backbone``; the rest of ``model`` keeps its initialisation (train from the written
    folder with ``kmax train --weights``).

    Returns:
        ``model``'s full state dict.

    Raises:
        CheckpointMismatchError: the file does not fit the backbone.
    """
    load_imagenet_backbone(src, model.backbone, strict=strict)
    return model.state_dict()
