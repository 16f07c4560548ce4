"""kMaX pixel decoder (spec §1.2; deeplab2 ``model/pixel_decoder/kmax.py``).

Backbone features, from the coarsest (res5, stride 32) to the finest (res2, stride 4,
plus the stem for Cityscapes), each pass a channels-first LayerNorm (``_in_norms.{i}``).
Stage 0 runs on res5; every later stage i first fuses the previous stage output with
skip i (:class:`ResizedFuse`, ``_resized_fuses.{i-1}``). Stages are groups of
pre-activation residual blocks (:class:`DecoderBlock`), axial or bottleneck.

COCO R50 widths: f = 512 / 256 / 128 / 64 with 1 / 5 / 1 / 1 blocks of types
axial / axial / bottleneck / bottleneck, outputs 2048×41², 1024×81², 512×161², 256×321²
at 1281×1281.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.layers.axial_attention import AxialAttention2d
from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct
from kmax_deeplab.modeling.layers.drop_path import DropPath
from kmax_deeplab.modeling.layers.norm import LayerNorm2d

ALIGN_CORNERS_RULES = ("bytedance", "always")


def resize_align_corners(source_width: int, rule: str = "bytedance") -> bool:
    """The ``align_corners`` flag of a bilinear resize whose source is ``source_width`` wide.

    bytedance (BD) switches align_corners on only when the *source* width is odd; deeplab2
    (``rule="always"``) always aligns corners. With a 32k+1 canvas every map is odd except
    the stride-32 one when k is odd (e.g. 97 -> 4), so the rules differ only there: the
    stride-32 -> 16 fuse and the aux semantic decoder's upsamplings.

    Raises:
        ValueError: unknown ``rule``.
    """
    if rule == "bytedance":
        return source_width % 2 == 1
    if rule == "always":
        return True
    raise ValueError(f"align_corners rule must be one of {ALIGN_CORNERS_RULES}, got {rule!r}")


def deeplab2_decoder_atrous_rate(original_resnet_input_stride: int = 32, output_stride: int = 16) -> int:
    """Atrous rate of the 3×3 convs in deeplab2's kMaX pixel-decoder blocks.

    deeplab2 (``model/pixel_decoder/kmax.py``) builds every decoder stage, the Cityscapes
    stride-2 stage included, as ``axial_block_groups.BlockGroup`` with
    ``original_resnet_input_stride=32``, ``original_resnet_stride=1`` and the default
    ``output_stride=16``; ``BlockGroup`` gives each block the rate
    ``original_resnet_input_stride // output_stride`` when the former is larger
    (``model/layers/axial_block_groups.py``), and ``AxialBlock`` applies it to the 3×3 conv
    of a bottleneck block (``axial_blocks.py``; an axial block has no 3×3 conv). So the rate
    is 2 at every stage, whatever the feature's real stride. bytedance's port uses rate 1.
    """
    if original_resnet_input_stride > output_stride:
        return original_resnet_input_stride // output_stride
    return 1


class DecoderBlock(nn.Module):
    """Pre-activation residual block, axial or bottleneck (spec §1.2 "Block").

    ``x = GELU(x)``; shortcut = x (or 1×1 conv + BN when channels change); residual =
    1×1 conv-BN-GELU, then axial attention + GELU (axial) or 3×3 conv-BN-GELU
    (bottleneck), then 1×1 conv-BN with γ = 0 and drop path. Output = residual +
    shortcut, not activated. ``[B, D_in, H, W] -> [B, filters[2], H, W]``.

    Args:
        in_channels: D_in.
        filters: ``(f1, f2, f3)``: axial ``(2f, f, 4f)`` (attention outputs 2f), bottleneck
            ``(f, f, 4f)``.
        block_type: ``"axial"`` or ``"bottleneck"``.
        shape: (h, w) of the feature map (axial position tables).
        num_heads: axial heads.
        drop_path: stochastic-depth rate of the residual branch.
        norm: batch-norm kind.
        dilation: atrous rate of the bottleneck's 3×3 conv (padding = rate, stride 1):
            1 in bytedance, 2 in deeplab2 (see :func:`deeplab2_decoder_atrous_rate`).
            Axial blocks have no 3×3 conv and ignore it.

    Raises:
        ValueError: unknown ``block_type``, ``dilation < 1``.
    """

    def __init__(
        self,
        in_channels: int,
        filters: Sequence[int],
        block_type: str,
        *,
        shape: Sequence[int],
        num_heads: int = 8,
        drop_path: float = 0.0,
        norm: str = "BN",
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if int(dilation) < 1:
            raise ValueError(f"decoder block dilation must be >= 1, got {dilation}")
        self.block_type = block_type
        f1, f2, f3 = filters
        self._conv1_bn_act = ConvNormAct(in_channels, f1, 1, norm=norm, act="gelu")
        if block_type == "axial":
            self._attention = AxialAttention2d(f1, shape, f2, num_heads=num_heads, norm=norm)
            mid = self._attention.value_depth
        elif block_type == "bottleneck":
            self._conv2_bn_act = ConvNormAct(f1, f2, 3, dilation=int(dilation), norm=norm, act="gelu")
            mid = f2
        else:
            raise ValueError(f"unknown decoder block type {block_type!r}; expected 'axial' or 'bottleneck'")
        self._conv3_bn = ConvNormAct(mid, f3, 1, norm=norm, norm_init_zero=True)
        self._shortcut = ConvNormAct(in_channels, f3, 1, norm=norm) if in_channels != f3 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(x)
        shortcut = x if self._shortcut is None else self._shortcut(x)
        x = self._conv1_bn_act(x)
        if self.block_type == "axial":
            x = F.gelu(self._attention(x))
        else:
            x = self._conv2_bn_act(x)
        x = self._conv3_bn(x)
        return self.drop_path(x) + shortcut


class BlockGroup(nn.Module):
    """A stage: ``num_blocks`` :class:`DecoderBlock` s in ``_blocks`` (``[B, D_in, h, w] -> [B, 4f, h, w]``).

    Args:
        in_channels: D_in of the first block.
        base_filter: f; block filters ``(2f, f, 4f)`` for axial, ``(f, f, 4f)`` for bottleneck.
        num_blocks: blocks in the stage.
        block_type: ``"axial"`` or ``"bottleneck"``.
        shape: (h, w) of the stage's feature map.
        num_heads / drop_path / norm / dilation: passed to every block.
    """

    def __init__(
        self,
        in_channels: int,
        base_filter: int,
        num_blocks: int,
        block_type: str,
        *,
        shape: Sequence[int],
        num_heads: int = 8,
        drop_path: float = 0.0,
        norm: str = "BN",
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if block_type == "axial":
            filters = (2 * base_filter, base_filter, 4 * base_filter)
        else:
            filters = (base_filter, base_filter, 4 * base_filter)
        self.out_channels = filters[2]
        self._blocks = nn.ModuleList()
        for _ in range(num_blocks):
            self._blocks.append(DecoderBlock(in_channels, filters, block_type, shape=shape,
                                             num_heads=num_heads, drop_path=drop_path, norm=norm,
                                             dilation=dilation))
            in_channels = filters[2]

    def forward(self, x: Tensor) -> Tensor:
        for block in self._blocks:
            x = block(x)
        return x


class ResizedFuse(nn.Module):
    """Fuse a coarse decoder output with a finer backbone skip (spec §1.2 "ResizedFuse").

    low: GELU → 1×1 conv → BN (when ``low_channels != out_channels``) → bilinear resize
    to the skip size (align_corners per :func:`resize_align_corners`: BD aligns corners iff
    the coarse width is odd); high: GELU → 1×1 conv → BN (when
    ``high_channels != out_channels``); output = low + high, ``[B, out_channels, h, w]``.

    Args:
        low_channels: channels of the coarse input ``[B, D_low, h', w']``.
        high_channels: channels of the (LayerNormed) skip ``[B, D_high, h, w]``.
        out_channels: f of the next stage.
        norm: batch-norm kind.
        align_corners: ``"bytedance"`` (on iff the coarse width is odd) or ``"always"`` (deeplab2).
    """

    def __init__(self, low_channels: int, high_channels: int, out_channels: int, *, norm: str = "BN",
                 align_corners: str = "bytedance") -> None:
        super().__init__()
        resize_align_corners(1, align_corners)  # validate the rule
        self.align_corners = align_corners
        self._conv_bn_low = (
            ConvNormAct(low_channels, out_channels, 1, norm=norm) if low_channels != out_channels else None
        )
        self._conv_bn_high = (
            ConvNormAct(high_channels, out_channels, 1, norm=norm) if high_channels != out_channels else None
        )

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        if self._conv_bn_low is not None:
            low = self._conv_bn_low(F.gelu(low))
        ac = resize_align_corners(low.shape[-1], self.align_corners)
        low = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=ac)
        if self._conv_bn_high is not None:
            high = self._conv_bn_high(F.gelu(high))
        return low + high


class PixelDecoderOutput(NamedTuple):
    """What the pixel decoder hands to the transformer decoder (spec §1.2).

    Attributes:
        multi_scale_features: the stage outputs at strides 32, 16, 8, each ``[B, 4f_i, h_i, w_i]``.
        panoptic_feature: the last stage output ``[B, 4f_last, h, w]`` (stride 4).
        semantic_features: raw backbone ``[res5, res3, res2]`` for the aux semantic branch.
    """

    multi_scale_features: List[Tensor]
    panoptic_feature: Tensor
    semantic_features: List[Tensor]


class KMaXPixelDecoder(nn.Module):
    """The kMaX pixel decoder (spec §1.2).

    Args:
        in_features: backbone feature names from the coarsest to the finest, e.g.
            ``("res5", "res4", "res3", "res2")`` (``+ ("stem",)`` for Cityscapes).
        in_channels: channels of those features.
        in_strides: strides of those features (32, 16, 8, 4[, 4 or 2]).
        image_size: (H, W) canvas; the axial position tables are built for
            ((H−1)/s+1, (W−1)/s+1) at each axial stage's stride s.
        filters: base width f of each stage (COCO: 512, 256, 128, 64[, 32]).
        num_blocks: blocks per stage (1, 5, 1, 1[, 1]).
        block_types: ``"axial"``/``"bottleneck"`` per stage.
        num_heads: axial heads (8).
        drop_path: residual drop-path rate (0 in kMaX).
        norm: batch-norm kind.
        align_corners: resize rule of the fuses, ``"bytedance"`` or ``"always"`` (deeplab2).
        bottleneck_dilation: atrous rate of every bottleneck block's 3×3 conv, all stages
            (the Cityscapes stem stage included): 1 in bytedance, 2 in deeplab2.

    Raises:
        ValueError: the per-stage sequences have different lengths, fewer than 4 stages,
            or a resolution has more positions than the axial tables allow.
    """

    def __init__(
        self,
        in_features: Sequence[str],
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        *,
        image_size: Sequence[int],
        filters: Sequence[int],
        num_blocks: Sequence[int],
        block_types: Sequence[str],
        num_heads: int = 8,
        drop_path: float = 0.0,
        norm: str = "BN",
        align_corners: str = "bytedance",
        bottleneck_dilation: int = 1,
    ) -> None:
        super().__init__()
        lengths = {len(in_features), len(in_channels), len(in_strides), len(filters),
                   len(num_blocks), len(block_types)}
        if len(lengths) != 1:
            raise ValueError(
                "KMaXPixelDecoder: in_features/in_channels/in_strides/filters/num_blocks/block_types "
                f"must have equal lengths, got {list(in_features)}, {list(in_channels)}, "
                f"{list(in_strides)}, {list(filters)}, {list(num_blocks)}, {list(block_types)}"
            )
        if len(in_features) < 4:
            raise ValueError(f"KMaXPixelDecoder needs at least 4 stages (strides 32..4), got {len(in_features)}")
        self.in_features = list(in_features)
        self.num_stages = len(in_features)
        self._in_norms = nn.ModuleList(LayerNorm2d(c) for c in in_channels)
        self._stages = nn.ModuleList()
        self._resized_fuses = nn.ModuleList()
        self.out_channels: list[int] = []
        for i in range(self.num_stages):
            stride = in_strides[i]
            shape = ((image_size[0] - 1) // stride + 1, (image_size[1] - 1) // stride + 1)
            stage_in = in_channels[0] if i == 0 else filters[i]
            stage = BlockGroup(stage_in, filters[i], num_blocks[i], block_types[i], shape=shape,
                               num_heads=num_heads, drop_path=drop_path, norm=norm,
                               dilation=bottleneck_dilation)
            self._stages.append(stage)
            if i > 0:
                self._resized_fuses.append(
                    ResizedFuse(self.out_channels[-1], in_channels[i], filters[i], norm=norm,
                                align_corners=align_corners))
            self.out_channels.append(stage.out_channels)

    def forward(self, features: Dict[str, Tensor]) -> PixelDecoderOutput:
        """Decode backbone features.

        Args:
            features: name -> ``[B, D_i, h_i, w_i]`` backbone features (must contain ``in_features``).

        Returns:
            :class:`PixelDecoderOutput`.

        Raises:
            KeyError: a needed feature is missing.
        """
        missing = [name for name in self.in_features if name not in features]
        if missing:
            raise KeyError(f"pixel decoder: backbone features {missing} missing; got {sorted(features)}")
        outs = []
        x = self._in_norms[0](features[self.in_features[0]])
        for i in range(self.num_stages):
            if i > 0:
                skip = self._in_norms[i](features[self.in_features[i]])
                x = self._resized_fuses[i - 1](x, skip)
            x = self._stages[i](x)
            outs.append(x)
        raw = [features[self.in_features[j]] for j in (0, 2, 3)]
        return PixelDecoderOutput(outs[:3], outs[-1], raw)


__all__ = ["ALIGN_CORNERS_RULES", "BlockGroup", "DecoderBlock", "KMaXPixelDecoder", "PixelDecoderOutput", "ResizedFuse",
           "deeplab2_decoder_atrous_rate", "resize_align_corners"]
