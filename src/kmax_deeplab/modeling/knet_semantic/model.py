"""The semantic K-Net (K-Net paper §4.3; mmseg ``EncoderDecoder`` with K-Net's
``IterativeDecodeHead``).

Source: ZwwWayne/K-Net @5e50ee5 ``knet/seg/iter_decode_head.py``,
``knet/seg/seg_kernel_head.py``, ``knet/seg/kernel_update_head.py`` and
``configs/seg/knet/knet_s3_*_r50-d8_80k_adamw_ade20k.py``; mmseg 0.30
``EncoderDecoder.encode_decode``.

Forward (``images`` ``[B, 3, H, W]`` float RGB 0..255):

1. normalise with ImageNet mean/std (mmseg ``img_norm_cfg``), backbone features ``res2..res5``;
2. decode head (FCN / PSPNet / DeepLabv3 / UPerNet): ``feats`` ``[B, D, h, w]`` and stage-0
   logits ``conv_seg(dropout(feats))`` ``[B, K, h, w]``; the K initial kernels are
   ``conv_seg.weight`` ``[K, D]`` (one per class, no bias);
3. ``num_stages`` :class:`~kmax_deeplab.modeling.knet.kernel_update.KernelUpdateHead`
   stages with soft (softmax over the K kernels) gathering and no class branch, each taking
   the same ``feats``, the previous kernels and logits, giving new logits ``[B, K, h, w]``;
4. eval: ``{"sem_seg": last logits resized to (H, W)}`` (bilinear, ``align_corners``);
   training: every stage's logits and the auxiliary head's.

Our names: ``backbone.*`` (shared ResNet names), ``decode_head.*`` (mmseg's names of the head),
``stages.{i}.*`` (the K-Net update stage), ``auxiliary_head.*`` (mmseg's FCN names);
``checkpoints/mmseg.py`` maps them to mmseg's.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.geometry import IMAGENET_MEAN, IMAGENET_STD
from kmax_deeplab.modeling.knet.kernel_update import KernelUpdateHead
from kmax_deeplab.modeling.semantic.heads import ASPPHead, DecodeHead, FCNHead, PSPHead, UPerHead

__all__ = ["KNetSemantic", "build_backbone", "build_head", "build_knet_semantic"]


def build_backbone(name: str, *, dilated: bool, norm: str = "BN", drop_path: float = 0.0) -> nn.Module:
    """``resnet50_v1c`` / ``resnet101_v1c`` (mmseg ``ResNetV1c``, output stride 8 when
    ``dilated`` else 32), ``swin_t`` / ``swin_l`` (Swin, window 7, output stride 32, stochastic
    depth ``drop_path``; the configs' ``*swin*``) or ``resnet_tiny`` (tests; output stride 32 or,
    dilated, 8).

    Raises:
        ValueError: unknown name, a dilated Swin, or ``drop_path`` for a ResNet.
    """
    from kmax_deeplab.modeling.backbones.resnet import ResNet, resnet_v1c
    from kmax_deeplab.modeling.backbones.swin import swin

    if name in ("swin_t", "swin_l"):
        if dilated:
            raise ValueError(f"model.dilated: backbone {name!r} has no dilated form (output stride 32); "
                             f"use decode_head 'upernet' or model.dilated false")
        return swin("tiny" if name == "swin_t" else "large", drop_path=drop_path)
    if drop_path:
        raise ValueError(f"model.backbone_drop_path: backbone {name!r} has no stochastic depth, got {drop_path}")
    if name in ("resnet50_v1c", "resnet101_v1c"):
        return resnet_v1c(50 if name.startswith("resnet50") else 101, dilated=dilated, norm=norm)
    if name == "resnet_tiny":
        geometry = (dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True) if dilated
                    else dict(strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1), contract_dilation=True))
        return ResNet((1, 1, 1, 1), stem_channels=16, bottleneck_channels=(8, 16, 32, 64), layout="bytedance",
                      norm=norm, bn_eps=1e-5, bn_momentum=0.1, deep_stem=True, **geometry)
    raise ValueError(f"model.backbone: the semantic K-Net takes resnet50_v1c, resnet101_v1c or resnet_tiny, "
                     f"got {name!r}")


def build_head(kind: str, channels_of: dict[str, int], num_classes: int, *, channels: int | None = None,
               norm: str = "BN", dropout_ratio: float = 0.1, align_corners: bool = False) -> DecodeHead:
    """The decode head of the K-Net ADE20K config ``kind`` on a backbone with ``channels_of``
    (``res2..res5`` -> channels).

    Args:
        kind: ``fcn`` (``res5``, 2 convs, ``concat_input``), ``pspnet`` (``res5``, pool scales
            1/2/3/6), ``deeplabv3`` (``res5``, ASPP rates 1/12/24/36), ``upernet``
            (``res2..res5``, PPM 1/2/3/6) or ``aux_fcn`` (``res4``, 1 conv, no concat).
        channels: the head's width (None: 512; UPerNet and ``aux_fcn`` 256).

    Raises:
        ValueError: unknown kind.
    """
    kw = dict(norm=norm, dropout_ratio=dropout_ratio, align_corners=align_corners)
    if kind == "fcn":
        return FCNHead("res5", channels_of["res5"], channels or 512, num_classes, num_convs=2, concat_input=True, **kw)
    if kind == "aux_fcn":
        return FCNHead("res4", channels_of["res4"], channels or 256, num_classes, num_convs=1, concat_input=False,
                       **kw)
    if kind == "pspnet":
        return PSPHead("res5", channels_of["res5"], channels or 512, num_classes, pool_scales=(1, 2, 3, 6), **kw)
    if kind == "deeplabv3":
        return ASPPHead("res5", channels_of["res5"], channels or 512, num_classes, dilations=(1, 12, 24, 36), **kw)
    if kind == "upernet":
        names = ("res2", "res3", "res4", "res5")
        return UPerHead(names, [channels_of[n] for n in names], channels or 256, num_classes,
                        pool_scales=(1, 2, 3, 6), **kw)
    raise ValueError(f"model.decode_head: unknown decode head {kind!r}; expected fcn, pspnet, deeplabv3 or upernet")


class KNetSemantic(nn.Module):
    """Backbone + decode head + K-Net kernel update stages (+ auxiliary FCN head).

    Args:
        backbone: a :class:`~kmax_deeplab.modeling.backbones.base.Backbone` giving ``res2..res5``.
        decode_head: the kernel-generating head (its ``conv_seg`` weights are the initial kernels).
        num_stages: kernel update stages (3).
        num_heads / ffn_channels: of each stage (8 / 2048).
        updator_channels: the updator width (256; D/U pieces per D-d kernel).
        auxiliary_head: the FCN head on ``res4`` (training only) or None.
        align_corners: of the final resize to the input size.
        pixel_mean / pixel_std: RGB 0..255 normalisation (mmseg ``img_norm_cfg``).
    """

    def __init__(self, backbone: nn.Module, decode_head: DecodeHead, *, num_stages: int = 3, num_heads: int = 8,
                 ffn_channels: int = 2048, updator_channels: int = 256, auxiliary_head: DecodeHead | None = None,
                 align_corners: bool = False, pixel_mean: Sequence[float] = IMAGENET_MEAN,
                 pixel_std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.num_classes = decode_head.num_classes
        self.stages = nn.ModuleList([
            KernelUpdateHead(decode_head.num_classes, channels=decode_head.channels, num_heads=num_heads,
                             ffn_channels=ffn_channels, num_mask_fcs=1, gather="softmax", with_cls=False,
                             updator_channels=updator_channels) for _ in range(num_stages)])
        self.auxiliary_head = auxiliary_head
        self.align_corners = align_corners
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), False)

    def stage_logits(self, features: dict[str, Tensor]) -> list[Tensor]:
        """Backbone features -> ``[decode head logits, stage 1, ..., stage S]``, each ``[B, K, h, w]``
        at the decode head's resolution (mmseg ``IterativeDecodeHead.forward`` in training)."""
        feats = self.decode_head.forward_features(features)
        logits = self.decode_head.cls_seg(feats)
        kernels = self.decode_head.conv_seg.weight.flatten(1).expand(feats.shape[0], -1, -1)  # [B, K, D]
        outs = [logits]
        for stage in self.stages:
            logits, kernels = stage(feats, kernels, logits)[1:]
            outs.append(logits)
        return outs

    def forward(self, images: Tensor) -> dict:
        """Images ``[B, 3, H, W]`` float RGB 0..255 ->

        * eval: ``{"sem_seg": float [B, K, H, W]}``, the last stage's logits bilinearly resized
          to the input size (mmseg ``EncoderDecoder.encode_decode``);
        * training: ``{"stage_logits": list of S+1 [B, K, h, w], "aux_logits": [B, K, h', w'] or
          None}`` at the heads' resolutions (the criterion resizes them to the labels).
        """
        x = (images - self.pixel_mean) / self.pixel_std
        features = self.backbone(x)
        logits = self.stage_logits(features)
        if self.training:
            aux = self.auxiliary_head(features) if self.auxiliary_head is not None else None
            return {"stage_logits": logits, "aux_logits": aux}
        out = F.interpolate(logits[-1], size=images.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return {"sem_seg": out}


def build_knet_semantic(*, backbone: str = "resnet50_v1c", decode_head: str = "upernet", num_classes: int = 150,
                        dilated: bool | None = None, head_channels: int | None = None, updator_dim: int = 256,
                        num_stages: int = 3, num_heads: int = 8, ffn_dim: int = 2048, auxiliary_head: bool = True,
                        aux_channels: int = 256, dropout_ratio: float = 0.1, align_corners: bool = False,
                        norm: str = "BN", backbone_drop_path: float = 0.0) -> KNetSemantic:
    """The semantic K-Net of the original ADE20K configs (defaults: K-Net + UPerNet R-50).

    See :class:`~kmax_deeplab.modeling.knet_semantic.config.KNetSemanticModelConfig` for the
    arguments. Raises ValueError for an unknown backbone / decode head or an updator width
    that does not divide the kernel width.
    """
    if dilated is None:
        dilated = decode_head != "upernet"
    net = build_backbone(backbone, dilated=dilated, norm=norm, drop_path=backbone_drop_path)
    channels_of = {s.name: s.channels for s in net.feature_info}
    head = build_head(decode_head, channels_of, num_classes, channels=head_channels, norm=norm,
                      dropout_ratio=dropout_ratio, align_corners=align_corners)
    aux = (build_head("aux_fcn", channels_of, num_classes, channels=aux_channels, norm=norm,
                      dropout_ratio=dropout_ratio, align_corners=align_corners) if auxiliary_head else None)
    if head.channels % updator_dim:
        raise ValueError(f"model.updator_dim ({updator_dim}) must divide the decode head's width ({head.channels})")
    return KNetSemantic(net, head, num_stages=num_stages, num_heads=num_heads, ffn_channels=ffn_dim,
                        updator_channels=updator_dim, auxiliary_head=aux, align_corners=align_corners)
