"""Auxiliary semantic predictors, used in training only (kMaX spec §1.5; shared with MaX-DeepLab).

* :class:`AuxSemanticDecoder` (COCO, ADE20K): a Panoptic-DeepLab single decoder on the raw
  backbone res5 / res3 / res2 (ASPP, two low-level fusions) plus a head to C+1 classes.
* :class:`AuxSemanticHead` (Cityscapes): a head only, on res5 at stride 32, to C classes;
  an ``nn.Sequential`` so its keys are ``.0/.1/.2`` as in the bytedance checkpoint.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.layers.resize import resize_align_corners
from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct


#: ``low_level_activation`` name -> function (None: the raw features, bytedance).
LOW_LEVEL_ACTIVATIONS = {"none": None, "relu": F.relu, "gelu": F.gelu}


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): ``[B, D_in, h, w] -> [B, channels, h, w]``.

    A 1×1 branch, three 3×3 branches at ``rates``, an image-pooling branch (global average,
    1×1 conv-BN-GELU, bilinear back to h×w), each conv-BN-GELU to ``channels``;
    concatenated, projected by 1×1 conv-BN-GELU, then dropout 0.1.

    Args:
        in_channels: D_in.
        channels: branch and output width (256).
        rates: dilation rates of the 3×3 branches (6, 12, 18).
        dropout: dropout after the projection (0.1).
        norm: batch-norm kind.

    Note: the pooling branch's BN sees one value per channel and image, so training
    needs more than one image per BN (batch >= 2 per device, or SyncBN across devices).
    """

    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = (6, 12, 18), *,
                 dropout: float = 0.1, norm: str = "BN", act: str = "gelu") -> None:
        super().__init__()
        if len(rates) != 3:
            raise ValueError(f"ASPP needs three atrous rates, got {list(rates)}")
        self._aspp_conv0 = ConvNormAct(in_channels, channels, 1, norm=norm, act=act)
        self._aspp_conv1 = ConvNormAct(in_channels, channels, 3, dilation=rates[0], norm=norm, act=act)
        self._aspp_conv2 = ConvNormAct(in_channels, channels, 3, dilation=rates[1], norm=norm, act=act)
        self._aspp_conv3 = ConvNormAct(in_channels, channels, 3, dilation=rates[2], norm=norm, act=act)
        self._aspp_pool = ConvNormAct(in_channels, channels, 1, norm=norm, act=act)
        self._proj_conv_bn_act = ConvNormAct(5 * channels, channels, 1, norm=norm, act=act)
        self._proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self._aspp_pool(F.adaptive_avg_pool2d(x, 1))  # [B, channels, 1, 1]
        branches = [
            self._aspp_conv0(x),
            self._aspp_conv1(x),
            self._aspp_conv2(x),
            self._aspp_conv3(x),
            F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True),
        ]
        return self._proj_drop(self._proj_conv_bn_act(torch.cat(branches, dim=1)))


class AuxSemanticDecoder(nn.Module):
    """Panoptic-DeepLab-style auxiliary semantic decoder (spec §1.5, COCO/ADE20K).

    ASPP on res5; upsample to stride 8, concatenate res3 projected to 64 channels, fuse
    (5×5 depthwise conv-BN-GELU, 1×1 conv-BN-GELU to ``channels``); repeat at stride 4 with
    res2 projected to 32; head: 5×5 depthwise, 1×1 to ``channels``, 1×1 to
    ``num_outputs`` with bias (std 0.01). Both upsamplings are bilinear with one flag taken
    from the ASPP output's width (:func:`resize_align_corners`; BD: on iff it is odd).

    Args:
        res5_channels / res3_channels / res2_channels: backbone widths.
        num_outputs: C+1 (void included).
        channels: ASPP / decoder width (256).
        low_level_channels: projections of res3 and res2 (64, 32).
        low_level_activation: ``"none"`` (bytedance: the raw res3/res2), ``"relu"`` or
            ``"gelu"``: applied to res3/res2 before their projections. deeplab2 feeds its
            backbone's activated ``res3``/``res2`` endpoints (``model/decoder/max_deeplab.py``
            reads them by name; ``pixel_encoder/axial_resnet.py``: ReLU, ``convnext.py``:
            GELU), while res5 enters the ASPP raw (``feature_semantic`` = ``stage5``).
        norm: batch-norm kind.
        align_corners: ``"bytedance"`` (on iff the stride-32 width is odd) or ``"always"`` (deeplab2).

    Raises:
        ValueError: unknown ``low_level_activation`` or ``align_corners`` rule.

    ``act`` (keyword): activation of every conv-BN, ``"gelu"`` (kMaX) or ``"relu"``
    (MaX-DeepLab, which shares this decoder: deeplab2 ``decoder/max_deeplab.py``).
    """

    def __init__(
        self,
        res5_channels: int,
        res3_channels: int,
        res2_channels: int,
        num_outputs: int,
        *,
        channels: int = 256,
        low_level_channels: Sequence[int] = (64, 32),
        low_level_activation: str = "none",
        act: str = "gelu",
        norm: str = "BN",
        align_corners: str = "bytedance",
    ) -> None:
        super().__init__()
        resize_align_corners(1, align_corners)  # validate the rule
        self.align_corners = align_corners
        os8, os4 = low_level_channels
        if low_level_activation not in LOW_LEVEL_ACTIVATIONS:
            raise ValueError(f"low_level_activation must be one of {tuple(LOW_LEVEL_ACTIVATIONS)}, "
                             f"got {low_level_activation!r}")
        self.low_level_activation = low_level_activation
        self._aspp = ASPP(res5_channels, channels, (6, 12, 18), norm=norm, act=act)
        self._low_level_projection_os8 = ConvNormAct(res3_channels, os8, 1, norm=norm, act=act)
        self._low_level_fusion_os8_conv0_bn_act = ConvNormAct(
            channels + os8, channels + os8, 5, depthwise=True, norm=norm, act=act)
        self._low_level_fusion_os8_conv1_bn_act = ConvNormAct(channels + os8, channels, 1, norm=norm, act=act)
        self._low_level_projection_os4 = ConvNormAct(res2_channels, os4, 1, norm=norm, act=act)
        self._low_level_fusion_os4_conv0_bn_act = ConvNormAct(
            channels + os4, channels + os4, 5, depthwise=True, norm=norm, act=act)
        self._low_level_fusion_os4_conv1_bn_act = ConvNormAct(channels + os4, channels, 1, norm=norm, act=act)
        self.conv_block_0 = ConvNormAct(channels, channels, 5, depthwise=True, norm=norm, act=act)
        self.conv_block_1 = ConvNormAct(channels, channels, 1, norm=norm, act=act)
        self.final_conv = ConvNormAct(channels, num_outputs, 1, bias=True, norm="none", init_std=0.01)

    def forward(self, res5: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        """``res5 [B, D5, h/8, w/8]``, ``res3 [B, D3, h/2, w/2]``, ``res2 [B, D2, h, w]`` -> ``[B, C+1, h, w]``."""
        act = LOW_LEVEL_ACTIVATIONS[self.low_level_activation]
        if act is not None:
            res3, res2 = act(res3), act(res2)
        x = self._aspp(res5)
        # BD decides once, from the stride-32 width, for both upsamplings.
        ac = resize_align_corners(x.shape[-1], self.align_corners)
        low = self._low_level_projection_os8(res3)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=ac)
        x = torch.cat([x, low], dim=1)
        x = self._low_level_fusion_os8_conv1_bn_act(self._low_level_fusion_os8_conv0_bn_act(x))
        low = self._low_level_projection_os4(res2)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=ac)
        x = torch.cat([x, low], dim=1)
        x = self._low_level_fusion_os4_conv1_bn_act(self._low_level_fusion_os4_conv0_bn_act(x))
        return self.final_conv(self.conv_block_1(self.conv_block_0(x)))


class AuxSemanticHead(nn.Sequential):
    """Cityscapes head-only semantic predictor on res5 (spec §1.5): ``[B, D5, h', w'] -> [B, C, h', w']``.

    ``0``: 5×5 depthwise conv-BN-GELU; ``1``: 1×1 conv-BN-GELU to ``channels``; ``2``: 1×1
    conv with bias (std 0.01) to ``num_outputs`` (C, no void channel in bytedance).
    ``forward(res5, *ignored)`` accepts the same three features as :class:`AuxSemanticDecoder`.

    Args:
        res5_channels: D5.
        num_outputs: C.
        channels: hidden width (256).
        norm: batch-norm kind.
    """

    def __init__(self, res5_channels: int, num_outputs: int, *, channels: int = 256, norm: str = "BN",
                 act: str = "gelu") -> None:
        super().__init__(
            ConvNormAct(res5_channels, res5_channels, 5, depthwise=True, norm=norm, act=act),
            ConvNormAct(res5_channels, channels, 1, norm=norm, act=act),
            ConvNormAct(channels, num_outputs, 1, bias=True, norm="none", init_std=0.01),
        )

    def forward(self, res5: Tensor, *ignored: Tensor) -> Tensor:  # type: ignore[override]
        for module in self:
            res5 = module(res5)
        return res5


__all__ = ["ASPP", "AuxSemanticDecoder", "AuxSemanticHead", "LOW_LEVEL_ACTIVATIONS"]
