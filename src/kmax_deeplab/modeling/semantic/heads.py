"""mmsegmentation 0.30 decode heads: FCN, PSPNet, DeepLabv3 (ASPP) and UPerNet.

Each head follows mmseg's ``BaseDecodeHead`` (``mmseg/models/decode_heads/decode_head.py``)
and its subclass (``fcn_head.py``, ``psp_head.py``, ``aspp_head.py``, ``uper_head.py``),
with mmseg's module and key names (``convs.0.conv.weight``, ``convs.0.bn.*``,
``conv_seg.{weight,bias}``…) so an mmseg state dict loads key for key. Every conv is
mmseg's ``ConvModule``: a bias-free conv, BN (eps 1e-5, momentum 0.1) and ReLU
(:class:`ConvModule`). Logits come from ``conv_seg`` (1×1 conv with bias) after
``Dropout2d(dropout_ratio)``.

``forward_features(features) -> feats [B, channels, h, w]`` is the part before the
classifier (K-Net's ``*KernelHead`` returns these ``feats`` and the ``conv_seg`` weights as
the initial semantic kernels, ``knet/seg/seg_kernel_head.py``); ``forward(features) ->
logits [B, num_classes, h, w]`` at the feature resolution (``h, w`` of the selected
input; mmseg resizes logits to the image outside the head).

Inputs are the backbone's feature dict (``feature_info`` names ``res2``..``res5``): each head
takes ``in_features`` (one name, or a list for UPerNet).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvModule", "PPM", "DecodeHead", "FCNHead", "PSPHead", "ASPPHead", "UPerHead", "build_decode_head"]


class ConvModule(nn.Module):
    """mmcv ``ConvModule(conv_cfg=None, norm_cfg=BN, act_cfg=ReLU)``: conv (no bias) -> BN -> ReLU.

    Keys ``conv.weight`` ``[D_out, D_in, k, k]`` and ``bn.*``.

    Args:
        in_channels, out_channels: D_in, D_out.
        kernel_size: k.
        padding, dilation: of the conv.
        norm: ``"BN"`` or ``"SyncBN"`` (eps 1e-5, momentum 0.1; the configs' SyncBN).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0,
                 dilation: int = 1, norm: str = "BN") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                              bias=False)
        if norm == "BN":
            self.bn: nn.Module = nn.BatchNorm2d(out_channels)
        elif norm == "SyncBN":
            self.bn = nn.SyncBatchNorm(out_channels)
        else:
            raise ValueError(f"ConvModule: norm must be 'BN' or 'SyncBN', got {norm!r}")
        # mmcv ConvModule.init_weights: kaiming_normal (fan_out, relu), zero bias; BN 1 / 0.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D_in, H, W]`` -> ``[B, D_out, H', W']``."""
        return F.relu(self.bn(self.conv(x)))


def _resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class PPM(nn.ModuleList):
    """mmseg pooling pyramid module (``psp_head.PPM``): per scale s, adaptive average pool
    to s×s, a 1×1 :class:`ConvModule`, bilinear resize back. Keys ``{i}.1.conv.weight``…

    Returns a list of ``[B, channels, H, W]``, one per scale.
    """

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int, *, norm: str = "BN",
                 align_corners: bool = False) -> None:
        super().__init__([nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1, norm=norm))
                          for s in pool_scales])
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        return [_resize(m(x), x.shape[2:], self.align_corners) for m in self]


class DecodeHead(nn.Module):
    """mmseg ``BaseDecodeHead``: ``conv_seg`` (1×1 with bias) after ``Dropout2d``.

    Args:
        in_features: backbone feature name(s) the head reads.
        channels: width of ``feats`` (mmseg ``channels``).
        num_classes: K (150 for ADE20K).
        dropout_ratio: ``Dropout2d`` probability before ``conv_seg`` (0.1 in every config).
        align_corners: of every bilinear resize (False in the configs).
    """

    def __init__(self, in_features: str | Sequence[str], channels: int, num_classes: int, *,
                 dropout_ratio: float = 0.1, norm: str = "BN", align_corners: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.channels = int(channels)
        self.num_classes = int(num_classes)
        self.norm = norm
        self.align_corners = align_corners
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        # mmseg BaseDecodeHead.init_weights: normal_init(conv_seg, mean=0, std=0.01), bias 0.
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def _input(self, features: Mapping[str, Tensor], name: str) -> Tensor:
        try:
            return features[name]
        except KeyError:
            raise KeyError(f"{type(self).__name__}: backbone output {name!r} missing; "
                           f"got {sorted(features)}") from None

    def forward_features(self, features: Mapping[str, Tensor]) -> Tensor:
        """Backbone features -> the head's ``feats`` ``[B, channels, h, w]`` (before ``cls_seg``).

        Abstract: every decode head (FCN, PSPNet, DeepLabv3, UPerNet) defines it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define forward_features")

    def cls_seg(self, feats: Tensor) -> Tensor:
        """``[B, channels, h, w]`` -> logits ``[B, num_classes, h, w]`` (dropout, ``conv_seg``)."""
        if self.dropout is not None:
            feats = self.dropout(feats)
        return self.conv_seg(feats)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Backbone feature dict -> logits ``[B, num_classes, h, w]`` at the input feature's size."""
        return self.cls_seg(self.forward_features(features))


class FCNHead(DecodeHead):
    """mmseg ``FCNHead``: ``num_convs`` k×k :class:`ConvModule` (``convs``), then with
    ``concat_input`` a k×k ``conv_cat`` on ``cat([x, convs(x)])``.

    K-Net FCN (``knet_s3_fcn_r50-d8``): ``res5`` 2048 -> 512, ``num_convs=2``,
    ``concat_input=True``; the auxiliary head of every config: ``res4`` 1024 -> 256,
    ``num_convs=1``, ``concat_input=False``.
    """

    def __init__(self, in_features: str, in_channels: int, channels: int, num_classes: int, *,
                 num_convs: int = 2, kernel_size: int = 3, concat_input: bool = True, dilation: int = 1,
                 **kwargs) -> None:
        super().__init__(in_features, channels, num_classes, **kwargs)
        if num_convs < 0:
            raise ValueError(f"FCNHead: num_convs must be >= 0, got {num_convs}")
        if num_convs == 0 and in_channels != channels:
            raise ValueError("FCNHead: num_convs=0 needs in_channels == channels")
        pad = kernel_size // 2 * dilation
        convs = [ConvModule(in_channels if i == 0 else channels, channels, kernel_size, padding=pad,
                            dilation=dilation, norm=self.norm) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        self.concat_input = concat_input
        if concat_input:
            self.conv_cat = ConvModule(in_channels + channels, channels, kernel_size, padding=kernel_size // 2,
                                       norm=self.norm)

    def forward_features(self, features: Mapping[str, Tensor]) -> Tensor:
        x = self._input(features, self.in_features)
        feats = self.convs(x)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats


class PSPHead(DecodeHead):
    """mmseg ``PSPHead``: :class:`PPM` (``psp_modules``, scales 1/2/3/6) and a 3×3
    ``bottleneck`` on ``cat([x, ppm(x)...])``. K-Net PSPNet: ``res5`` 2048 -> 512."""

    def __init__(self, in_features: str, in_channels: int, channels: int, num_classes: int, *,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs) -> None:
        super().__init__(in_features, channels, num_classes, **kwargs)
        self.psp_modules = PPM(pool_scales, in_channels, channels, norm=self.norm, align_corners=self.align_corners)
        self.bottleneck = ConvModule(in_channels + len(pool_scales) * channels, channels, 3, padding=1,
                                     norm=self.norm)

    def forward_features(self, features: Mapping[str, Tensor]) -> Tensor:
        x = self._input(features, self.in_features)
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))


class ASPPHead(DecodeHead):
    """mmseg ``ASPPHead`` (DeepLabv3): ``image_pool`` (global average pool + 1×1
    :class:`ConvModule`, resized back), ``aspp_modules`` (1×1 for rate 1, else 3×3 with
    dilation = padding = rate) and a 3×3 ``bottleneck`` on their concatenation.
    K-Net DeepLabv3: ``res5`` 2048 -> 512, rates 1/12/24/36."""

    def __init__(self, in_features: str, in_channels: int, channels: int, num_classes: int, *,
                 dilations: Sequence[int] = (1, 12, 24, 36), **kwargs) -> None:
        super().__init__(in_features, channels, num_classes, **kwargs)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1, norm=self.norm))
        self.aspp_modules = nn.ModuleList([
            ConvModule(in_channels, channels, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d,
                       norm=self.norm) for d in dilations])
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1, norm=self.norm)

    def forward_features(self, features: Mapping[str, Tensor]) -> Tensor:
        x = self._input(features, self.in_features)
        outs = [_resize(self.image_pool(x), x.shape[2:], self.align_corners)]
        outs += [m(x) for m in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))


class UPerHead(DecodeHead):
    """mmseg ``UPerHead``: PPM on the last input (``psp_modules`` + 3×3 ``bottleneck``),
    1×1 ``lateral_convs`` on the others, top-down bilinear sums, 3×3 ``fpn_convs``, all
    levels resized to the first and fused by a 3×3 ``fpn_bottleneck``.
    K-Net UPerNet: ``res2..res5`` (256/512/1024/2048) -> 256, scales 1/2/3/6; ``feats``
    at stride 4."""

    def __init__(self, in_features: Sequence[str], in_channels: Sequence[int], channels: int, num_classes: int, *,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs) -> None:
        super().__init__(list(in_features), channels, num_classes, **kwargs)
        if len(in_features) != len(in_channels) or len(in_channels) < 2:
            raise ValueError(f"UPerHead: need >= 2 in_features with one in_channels each, got "
                             f"{list(in_features)} / {list(in_channels)}")
        n = self.norm
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels, norm=n, align_corners=self.align_corners)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1, norm=n)
        self.lateral_convs = nn.ModuleList([ConvModule(c, channels, 1, norm=n) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvModule(channels, channels, 3, padding=1, norm=n)
                                        for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1, norm=n)

    def forward_features(self, features: Mapping[str, Tensor]) -> Tensor:
        xs = [self._input(features, name) for name in self.in_features]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, xs)]
        laterals.append(self.bottleneck(torch.cat([xs[-1], *self.psp_modules(xs[-1])], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:], self.align_corners)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [_resize(o, size, self.align_corners) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))


def build_decode_head(kind: str, *, num_classes: int = 150, norm: str = "BN", dropout_ratio: float = 0.1) -> DecodeHead:
    """The decode heads of the K-Net ADE20K configs (``configs/seg/knet/knet_s3_*_r50-d8_*.py``),
    for a ResNet-50 (``res2..res5`` = 256/512/1024/2048 channels).

    Args:
        kind: ``"fcn"``, ``"pspnet"``, ``"deeplabv3"``, ``"upernet"`` or ``"aux_fcn"`` (the
            auxiliary FCN head on ``res4``, loss weight 0.4 in the configs).
        num_classes: K.
        norm: ``"BN"`` or ``"SyncBN"``.
        dropout_ratio: before ``conv_seg``.
    Raises:
        ValueError: unknown kind.
    """
    kw = dict(norm=norm, dropout_ratio=dropout_ratio)
    if kind == "fcn":
        return FCNHead("res5", 2048, 512, num_classes, num_convs=2, concat_input=True, **kw)
    if kind == "aux_fcn":
        return FCNHead("res4", 1024, 256, num_classes, num_convs=1, concat_input=False, **kw)
    if kind == "pspnet":
        return PSPHead("res5", 2048, 512, num_classes, pool_scales=(1, 2, 3, 6), **kw)
    if kind == "deeplabv3":
        return ASPPHead("res5", 2048, 512, num_classes, dilations=(1, 12, 24, 36), **kw)
    if kind == "upernet":
        return UPerHead(("res2", "res3", "res4", "res5"), (256, 512, 1024, 2048), 256, num_classes,
                        pool_scales=(1, 2, 3, 6), **kw)
    raise ValueError(f"unknown decode head {kind!r}; expected fcn, pspnet, deeplabv3, upernet or aux_fcn")
