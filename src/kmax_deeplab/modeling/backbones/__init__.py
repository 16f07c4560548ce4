"""Backbones of the mask-transformer models and their one builder (spec §1.1).

>>> backbone = build_backbone("resnet_tiny")
>>> [(s.name, s.channels, s.stride) for s in backbone.feature_info][-1]
('res5', 256, 32)
"""

from __future__ import annotations

from collections.abc import Callable

from kmax_deeplab.modeling.backbones.base import (
    FEATURE_NAMES,
    Backbone,
    FeatureSpec,
    check_feature_info,
)
from kmax_deeplab.modeling.backbones.conv_norm import (
    RESNET_NORMS,
    Conv2dNorm,
    FrozenBatchNorm2d,
    freeze_batch_norms,
)
from kmax_deeplab.modeling.backbones.convnext import ConvNeXt, ConvNeXtBlock, convnext
from kmax_deeplab.modeling.backbones.swin import SWIN_SIZES, SwinTransformer
from kmax_deeplab.modeling.backbones.resnet import (
    BottleneckBlock,
    PreActBottleneckBlock,
    ResNet,
    resnet50,
    resnet_tiny,
    resnet_v1c,
)

# name -> builder(norm) for the ResNets; name -> size for ConvNeXt.
_RESNETS: dict[str, Callable[[str], ResNet]] = {
    "resnet50": lambda norm: resnet50(norm=norm, layout="bytedance"),
    "resnet50_deeplab2": lambda norm: resnet50(norm=norm, layout="deeplab2"),
    "resnet_tiny": lambda norm: resnet_tiny(norm=norm, layout="bytedance"),
}
_CONVNEXTS: dict[str, str] = {
    "convnext_tiny": "tiny",
    "convnext_small": "small",
    "convnext_base": "base",
    "convnext_large": "large",
}
BACKBONE_NAMES: tuple[str, ...] = tuple(_RESNETS) + tuple(_CONVNEXTS)


def build_backbone(name: str, *, drop_path: float = 0.0, norm: str = "BN") -> Backbone:
    """Build a backbone by name with freshly initialised weights.

    Args:
        name: ``"resnet50"`` (BD/detectron2 layout), ``"resnet50_deeplab2"`` (deeplab2
            layout: no max-pool, pre-activation, un-activated endpoints), ``"resnet_tiny"``
            (tiny BD-layout ResNet: outputs 32/64/128/256 channels), ``"convnext_tiny"``,
            ``"convnext_small"``, ``"convnext_base"`` or ``"convnext_large"``.
        drop_path: ConvNeXt stochastic-depth rate, rising linearly over all blocks from 0
            (spec §4: COCO T/S/B/L 0.3/0.4/0.5/0.6). ResNets have none and accept only 0.
        norm: batch norm of the ResNets: ``"BN"``, ``"SyncBN"``, ``"FrozenBN"`` or
            ``"none"`` (eps 1e-3, momentum 0.01). ConvNeXt has only LayerNorms and ignores
            it, but it must still be one of these values.

    Returns:
        A :class:`Backbone` whose ``feature_info`` lists ``stem``, ``res2``..``res5``.

    Raises:
        ValueError: unknown name or norm, ``drop_path`` outside [0, 1), or a non-zero
            ``drop_path`` for a ResNet.
    """
    if norm not in RESNET_NORMS:
        raise ValueError(f"unknown backbone norm {norm!r}; expected one of {RESNET_NORMS}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"backbone drop_path must be in [0, 1), got {drop_path}")
    if name in _RESNETS:
        if drop_path != 0.0:
            raise ValueError(f"backbone {name!r} has no stochastic depth (neither reference "
                             f"uses it for ResNet-50); got drop_path={drop_path}")
        return _RESNETS[name](norm)
    if name in _CONVNEXTS:
        return convnext(_CONVNEXTS[name], drop_path=drop_path)
    raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONE_NAMES}")


__all__ = [
    "BACKBONE_NAMES",
    "FEATURE_NAMES",
    "Backbone",
    "BottleneckBlock",
    "Conv2dNorm",
    "ConvNeXt",
    "ConvNeXtBlock",
    "FeatureSpec",
    "FrozenBatchNorm2d",
    "PreActBottleneckBlock",
    "ResNet",
    "SWIN_SIZES",
    "SwinTransformer",
    "build_backbone",
    "check_feature_info",
    "convnext",
    "freeze_batch_norms",
    "resnet50",
    "resnet_tiny",
    "resnet_v1c",
]
