"""Axial-ResNets with dual-path transformers and stacked decoders: the MaX-DeepLab encoder.

Source: deeplab2 ``model/encoder/axial_resnet.py`` (``AxialResNet``),
``model/encoder/axial_resnet_instances.py`` (``MaXDeepLabS``, ``MaXDeepLabL``),
``model/layers/{axial_block_groups,axial_blocks,stems,resized_fuse}.py``; spec
``max_deeplab.md`` §1-§2, §10.7. Axial-DeepLab (ECCV 2020), MaX-DeepLab (CVPR 2021),
SWideRNet (arXiv 2011.11675).

The encoder is deeplab2's whole ``encoder`` checkpoint item: stem, five (wide-ResNet) or
four (ResNet-beta) block groups, an optional dual-path transformer after each block at
stride ≥ ``use_transformer_beyond_stride``, the non-pretrained ``stage5_extra`` (no
backbone decoder) or the stacked hour-glass decoders (MaX-L), the decoder down to stride
4, and the memory's class / mask feature layers. It is built for one canvas
(``image_size``): the axial attention and the decoder's resize targets depend on it.

Conventions (spec §1): blocks take non-activated inputs and apply ReLU first, output
``branch + shortcut`` without ReLU; BN eps 1e-3, momentum 0.01 (TF 0.99); the last BN of
every residual branch starts at γ = 0. Sizes at stride s are ``(H - 1) // s + 1``.

Dilation (spec §10.7): deeplab2 gives a 3×3 conv the rate ``current_stride //
output_stride`` once the original ResNet stride exceeds the output stride. At OS16 that
only happens in stage 5, the extra stage and the stride-16 decoder stages, which are
axial blocks in both MaX variants; axial attention ignores the rate. Every conv block
here therefore runs at rate 1, but the rule is implemented for other configurations.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.layers.axial_attention import AxialAttention2d
from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct, trunc_normal_
from kmax_deeplab.modeling.layers.drop_path import DropPath
from kmax_deeplab.modeling.layers.dual_path_transformer import DualPathTransformerLayer

#: deeplab2 implements only global axial attention: an axis longer than its query block
#: (``query_shape`` 129, ``axial_layers.py``) raises ``NotImplementedError`` there.
AXIAL_QUERY_SHAPE = 129

__all__ = ["AXIAL_QUERY_SHAPE", "AxialBlock", "AxialResNet", "BlockGroup", "InceptionStem",
           "ResizedFuse", "drop_path_keep_prob", "scaled_size"]


def scaled_size(size: int, stride: int) -> int:
    """Feature size at ``stride`` of an input of ``size`` pixels: ``(size - 1) // stride + 1``.

    deeplab2 ``utils.scale_mutable_sequence``; also the size every stride-2 conv
    (pad ``k // 2``) produces.
    """
    return int((float(size) - 1.0) / stride + 1.0)


def drop_path_keep_prob(keep_prob_last: float, schedule: str, stage: int, num_stages: int = 4) -> float:
    """deeplab2 ``drop_path.get_drop_path_keep_prob``: ``constant`` or ``linear`` (1 - (1-p)·s/4).

    Raises:
        ValueError: unknown schedule.
    """
    if schedule == "constant":
        return keep_prob_last
    if schedule == "linear":
        return 1.0 - (1.0 - keep_prob_last) * stage / num_stages
    raise ValueError(f"unknown drop_path_schedule {schedule!r}; expected 'constant' or 'linear'")


class InceptionStem(nn.Module):
    """ResNet-beta stem (deeplab2 ``stems.InceptionSTEM``): ``[B, 3, H, W] -> [B, 128·m, H/2, W/2]``.

    Three 3×3 conv-BN: 3→64·m (stride 2) + ReLU, 64·m→64·m + ReLU, 64·m→128·m (no ReLU).
    """

    def __init__(self, width_multiplier: float = 1.0, *, norm: str = "BN") -> None:
        super().__init__()
        c = int(64 * width_multiplier)
        self.out_channels = int(128 * width_multiplier)
        self.conv1_bn_act = ConvNormAct(3, c, 3, stride=2, norm=norm, act="relu")
        self.conv2_bn_act = ConvNormAct(c, c, 3, norm=norm, act="relu")
        self.conv3_bn = ConvNormAct(c, self.out_channels, 3, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3_bn(self.conv2_bn_act(self.conv1_bn_act(x)))


class AxialBlock(nn.Module):
    """deeplab2 ``AxialBlock``: a basic, bottleneck or axial residual block.

    * ``filters`` of length 2: basic block, 3×3 conv-BN-ReLU (stride, rate) then 3×3
      conv-BN (γ = 0, ``second_conv_atrous_rate``) (wide ResNets).
    * length 3 without attention: bottleneck 1×1 / 3×3 (stride, rate) / 1×1 (γ = 0).
    * length 3 with ``attention_shape``: 1×1 conv-BN-ReLU, height- then width-axis
      attention (key depth ``key_expansion·f``, value depth ``value_expansion·f``, f =
      ``filters[1]``), ReLU, 1×1 conv-BN (γ = 0).

    The input is non-activated: ReLU is applied first, and the shortcut (a strided 1×1
    conv-BN when the width changes, else the activated input, subsampled when strided)
    takes the activated input. Output ``branch·drop_path + shortcut`` (no ReLU).

    Args:
        in_channels: D_in.
        filters: the 2 or 3 widths above.
        stride: 1 or 2 (applied in the first spatial op).
        atrous_rate / second_conv_atrous_rate: 3×3 dilations.
        attention_shape: (H, W) of the block input for an axial block, else None.
        key_expansion / value_expansion: axial attention depths relative to ``filters[1]``.
        drop_path_keep_prob: per-sample keep probability of the branch in training.
        norm: batch-norm kind.

    Raises:
        ValueError: ``filters`` of another length, or a strided axial block.
    """

    def __init__(self, in_channels: int, filters: Sequence[int], *, stride: int = 1, atrous_rate: int = 1,
                 second_conv_atrous_rate: Optional[int] = None, attention_shape: Optional[Sequence[int]] = None,
                 key_expansion: float = 1.0, value_expansion: float = 2.0, drop_path_keep_prob: float = 1.0,
                 norm: str = "BN") -> None:
        super().__init__()
        filters = list(filters)
        self.out_channels = filters[-1]
        self.stride = stride
        self.axial = attention_shape is not None
        if second_conv_atrous_rate is None:
            second_conv_atrous_rate = atrous_rate
        if len(filters) == 3:
            self.conv1_bn_act = ConvNormAct(in_channels, filters[0], 1, norm=norm, act="relu")
            if self.axial:
                if stride != 1:
                    raise ValueError("a strided axial block is not used by MaX-DeepLab and not implemented")
                self.attention = AxialAttention2d(filters[0], attention_shape, filters[1], key_expansion=key_expansion,
                                                  value_expansion=value_expansion, norm=norm)
                mid = self.attention.value_depth
            else:
                self.conv2_bn_act = ConvNormAct(filters[0], filters[1], 3, stride=stride, dilation=atrous_rate,
                                                norm=norm, act="relu")
                mid = filters[1]
            self.conv3_bn = ConvNormAct(mid, filters[2], 1, norm=norm, norm_init_zero=True)
        elif len(filters) == 2:
            if self.axial:
                raise ValueError("an axial block needs three filter widths")
            self.conv1_bn_act = ConvNormAct(in_channels, filters[0], 3, stride=stride, dilation=atrous_rate,
                                            norm=norm, act="relu")
            self.conv2_bn = ConvNormAct(filters[0], filters[1], 3, dilation=second_conv_atrous_rate, norm=norm,
                                        norm_init_zero=True)
        else:
            raise ValueError(f"AxialBlock: expected 2 or 3 filter widths, got {filters}")
        self.shortcut = (ConvNormAct(in_channels, filters[-1], 1, stride=stride, norm=norm)
                         if in_channels != filters[-1] else None)
        self.drop_path = DropPath(1.0 - drop_path_keep_prob)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D_in, H, W]`` (non-activated) -> ``[B, filters[-1], H', W']`` (non-activated)."""
        x = F.relu(x)
        if self.shortcut is not None:
            shortcut = self.shortcut(x)
        elif self.stride != 1:
            shortcut = x[:, :, ::self.stride, ::self.stride]
        else:
            shortcut = x
        if hasattr(self, "conv3_bn"):
            y = self.conv1_bn_act(x)
            y = F.relu(self.attention(y)) if self.axial else self.conv2_bn_act(y)
            y = self.conv3_bn(y)
        else:
            y = self.conv2_bn(self.conv1_bn_act(x))
        return self.drop_path(y) + shortcut


class BlockGroup(nn.Module):
    """deeplab2 ``BlockGroup``: ``num_blocks`` blocks, each optionally followed by a dual-path layer.

    Children ``block{i}`` and ``block{i}_transformer`` (1-based, deeplab2's names). The
    block kind, stride, atrous rate, drop-path probability and transformer placement
    follow deeplab2's rules from ``original_resnet_input_stride`` (the stride the group
    would have in the original ResNet), ``original_resnet_stride`` and ``output_stride``.

    Args:
        in_channels: D_in of the pixel input.
        filters: base width f of the group.
        num_blocks: blocks.
        input_shape: (H, W) of the pixel input.
        original_resnet_stride: 1 or 2.
        original_resnet_input_stride: power of two.
        output_stride: the encoder's output stride (16).
        backbone_type: ``"resnet_beta"`` or ``"wider_resnet"``.
        use_axial_beyond_stride / use_transformer_beyond_stride: 0 disables.
        transformer_expansion: dual-path width ``128·transformer_expansion``.
        memory_channels: D_m of the memory.
        attention_bottleneck_expansion: axial block widths ``[e·f, f, 4f]``.
        key_expansion / value_expansion: axial attention depths.
        ffn_channels: dual-path memory FFN width.
        drop_path_keep_prob / drop_path_beyond_stride / drop_path_schedule: stochastic depth.
        norm: batch-norm kind.

    Raises:
        ValueError: strides not powers of two, or an axis longer than :data:`AXIAL_QUERY_SHAPE`.
    """

    def __init__(self, in_channels: int, filters: int, num_blocks: int, *, input_shape: Sequence[int],
                 original_resnet_stride: int, original_resnet_input_stride: int, output_stride: int = 16,
                 backbone_type: str = "resnet_beta", use_axial_beyond_stride: int = 16,
                 use_transformer_beyond_stride: int = 32, transformer_expansion: float = 1.0,
                 memory_channels: int = 256, attention_bottleneck_expansion: int = 2, key_expansion: float = 1.0,
                 value_expansion: float = 2.0, ffn_channels: int = 2048, drop_path_keep_prob: float = 0.8,
                 drop_path_beyond_stride: int = 16, drop_path_schedule: str = "linear", norm: str = "BN") -> None:
        super().__init__()
        for name, v in (("original_resnet_input_stride", original_resnet_input_stride),
                        ("output_stride", output_stride)):
            if v & (v - 1):
                raise ValueError(f"{name} {v} is not a power of 2")
        if backbone_type not in ("resnet", "resnet_beta", "wider_resnet"):
            raise ValueError(f"unknown backbone_type {backbone_type!r}")
        self.num_blocks = num_blocks
        self.use_memory = False
        shape = (int(input_shape[0]), int(input_shape[1]))
        current = original_resnet_input_stride
        channels = in_channels
        for index in range(num_blocks):
            strides = original_resnet_stride if index == 0 and original_resnet_input_stride < output_stride else 1
            atrous = current // output_stride if current > output_stride else 1
            if index == 0 and original_resnet_input_stride * original_resnet_stride > output_stride:
                second_atrous = original_resnet_input_stride * original_resnet_stride // output_stride
            else:
                second_atrous = atrous
            if current >= drop_path_beyond_stride:
                keep = drop_path_keep_prob_for(drop_path_keep_prob, drop_path_schedule, current)
            else:
                keep = 1.0
            attention_shape = None
            if current >= use_axial_beyond_stride > 0:
                widths = [filters * attention_bottleneck_expansion, filters, filters * 4]
                attention_shape = shape
                if max(shape) > AXIAL_QUERY_SHAPE:
                    raise ValueError(
                        f"axial attention at stride {current}: a {shape[0]}x{shape[1]} feature map has an axis "
                        f"longer than {AXIAL_QUERY_SHAPE}, which deeplab2 (global axial attention only) does not "
                        f"cover; use a smaller image_size")
            elif backbone_type in ("resnet", "resnet_beta"):
                widths = [filters, filters, filters * 4]
            elif original_resnet_input_stride * original_resnet_stride < 32:
                widths = [filters * 4, filters * 4]
            else:
                widths = [filters, filters * 2, filters * 4]
            block = AxialBlock(channels, widths, stride=strides, atrous_rate=atrous,
                               second_conv_atrous_rate=second_atrous, attention_shape=attention_shape,
                               key_expansion=key_expansion, value_expansion=value_expansion,
                               drop_path_keep_prob=keep, norm=norm)
            setattr(self, f"block{index + 1}", block)
            channels = block.out_channels
            if strides != 1:
                shape = tuple(scaled_size(s, strides) for s in shape)  # type: ignore[assignment]
            if index == 0 and original_resnet_stride > 1:
                current *= original_resnet_stride
            if current >= use_transformer_beyond_stride > 0:
                self.use_memory = True
                setattr(self, f"block{index + 1}_transformer", DualPathTransformerLayer(
                    channels, memory_channels, int(128 * transformer_expansion), ffn_channels=ffn_channels,
                    drop_path_keep_prob=keep, norm=norm))
        self.out_channels = channels
        self.output_shape = shape

    def forward(self, x: Tensor, memory: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """``x [B, D_in, H, W]``, ``memory [B, D_m, N]`` or None -> the group's outputs (non-activated)."""
        for index in range(1, self.num_blocks + 1):
            x = getattr(self, f"block{index}")(x)
            transformer = getattr(self, f"block{index}_transformer", None)
            if transformer is not None:
                if memory is None:
                    raise ValueError("this block group has dual-path transformers but got no memory")
                x, memory = transformer(x, memory)
        return x, memory


def drop_path_keep_prob_for(keep_prob_last: float, schedule: str, current_stride: int) -> float:
    """Keep probability at ``current_stride``: stage ``log2(stride) - 1`` of 4 (deeplab2)."""
    stage = int(round(math.log2(current_stride) - 1))
    return drop_path_keep_prob(keep_prob_last, schedule, stage)


class ResizedFuse(nn.Module):
    """deeplab2 ``ResizedFuse``: resize every input to one size and width, then sum.

    Per input ``i`` (1-based): the same width -> bilinear resize (align corners) only; an
    input twice as large (``(h + 1) // 2`` = target) -> ReLU, strided 1×1 conv-BN
    (``strided_conv_bn{i}``); otherwise ReLU, 1×1 conv-BN (``resized_conv_bn{i}``), resize.

    Args:
        inputs: ``(channels, (h, w))`` of each input, in call order.
        channels: output width.
        shape: output (h, w).
        norm: batch-norm kind.
    """

    def __init__(self, inputs: Sequence[Tuple[int, Sequence[int]]], channels: int, shape: Sequence[int], *,
                 norm: str = "BN") -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        self.kinds: List[str] = []
        for index, (c, (h, w)) in enumerate(inputs):
            if c == channels:
                self.kinds.append("resize")
            elif (h + 1) // 2 == self.shape[0] and (w + 1) // 2 == self.shape[1]:
                self.kinds.append("strided")
                setattr(self, f"strided_conv_bn{index + 1}", ConvNormAct(c, channels, 1, stride=2, norm=norm))
            else:
                self.kinds.append("resized")
                setattr(self, f"resized_conv_bn{index + 1}", ConvNormAct(c, channels, 1, norm=norm))

    def _resize(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) == self.shape:
            return x
        return F.interpolate(x, size=self.shape, mode="bilinear", align_corners=True)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """``inputs`` as declared -> ``[B, channels, h, w]``."""
        out = None
        for index, (kind, x) in enumerate(zip(self.kinds, inputs)):
            if kind == "resize":
                y = self._resize(x)
            elif kind == "strided":
                y = getattr(self, f"strided_conv_bn{index + 1}")(F.relu(x))
            else:
                y = self._resize(getattr(self, f"resized_conv_bn{index + 1}")(F.relu(x)))
            out = y if out is None else out + y
        return out


class AxialResNet(nn.Module):
    """deeplab2 ``AxialResNet`` (non-classification mode): the MaX-DeepLab encoder.

    Defaults are MaX-DeepLab-S (``MaXDeepLabS``); :meth:`max_deeplab_l` gives MaX-L.

    Args:
        image_size: (H, W) of the canvas the model is built for.
        num_blocks: blocks of the last four stages ((3, 4, 6, 3) S, (3, 6, 3, 3) L).
        backbone_type: ``"resnet_beta"`` (Inception stem, 4 stages) or ``"wider_resnet"``
            (one 3×3 stem conv, 5 stages of basic blocks).
        width_multiplier / stem_width_multiplier: channel multipliers.
        output_stride: 16.
        use_axial_beyond_stride: stride from which blocks are axial (16).
        backbone_use_transformer_beyond_stride / extra_decoder_use_transformer_beyond_stride:
            strides from which dual-path layers follow the blocks (S: 32/32, L: 16/16).
        backbone_decoder_num_stacks / extra_decoder_num_stacks: stacked hour-glass decoders.
        backbone_decoder_blocks_per_stage / extra_decoder_blocks_per_stage: blocks per stage.
        num_mask_slots: N (128).
        memory_channels: D_m (256 S, 512 L).
        base_transformer_expansion: dual-path width at stride 16 (1 S, 2 L).
        global_ffn_channels: width of the class / mask feature layers (256 S, 512 L).
        high_resolution_output_stride: decoder output stride (4).
        attention_bottleneck_expansion / key_expansion / value_expansion: axial blocks.
        ffn_channels: dual-path memory FFN width (2048).
        drop_path_keep_prob / drop_path_beyond_stride / drop_path_schedule: stochastic depth
            (the deeplab2 configs: 0.8, 16 (S) or 4 (L), ``"linear"``).
        norm: batch-norm kind.

    Raises:
        ValueError: bad options, or an ``image_size`` whose stride-16 map the axial
            attention cannot cover (an axis longer than :data:`AXIAL_QUERY_SHAPE`).
    """

    def __init__(self, image_size: Sequence[int], *, num_blocks: Sequence[int] = (3, 4, 6, 3),
                 backbone_type: str = "resnet_beta", width_multiplier: float = 1.0,
                 stem_width_multiplier: float = 1.0, output_stride: int = 16, use_axial_beyond_stride: int = 16,
                 backbone_use_transformer_beyond_stride: int = 32, extra_decoder_use_transformer_beyond_stride: int = 32,
                 backbone_decoder_num_stacks: int = 0, backbone_decoder_blocks_per_stage: int = 1,
                 extra_decoder_num_stacks: int = 0, extra_decoder_blocks_per_stage: int = 1,
                 num_mask_slots: int = 128, memory_channels: int = 256, base_transformer_expansion: float = 1.0,
                 global_ffn_channels: int = 256, high_resolution_output_stride: int = 4,
                 attention_bottleneck_expansion: int = 2, key_expansion: float = 1.0, value_expansion: float = 2.0,
                 ffn_channels: int = 2048, drop_path_keep_prob: float = 0.8, drop_path_beyond_stride: int = 16,
                 drop_path_schedule: str = "linear", norm: str = "BN") -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks needs 4 entries, got {list(num_blocks)}")
        if extra_decoder_blocks_per_stage <= 0:
            raise ValueError("extra_decoder_blocks_per_stage must be > 0")
        if not (backbone_use_transformer_beyond_stride or extra_decoder_use_transformer_beyond_stride):
            raise ValueError("MaX-DeepLab needs dual-path transformers (a memory path)")
        height, width = int(image_size[0]), int(image_size[1])
        self.image_size = (height, width)
        self.output_stride = output_stride
        self.high_resolution_output_stride = high_resolution_output_stride
        self.backbone_decoder_num_stacks = backbone_decoder_num_stacks
        self.extra_decoder_num_stacks = extra_decoder_num_stacks
        self.num_mask_slots = num_mask_slots
        self.memory_channels = memory_channels

        total_strides = [1, 2, 4, 8, 16]
        blocks_list = [3] + [int(b) for b in num_blocks]
        strides = [2] * 5
        expansions = [base_transformer_expansion * s / 16.0 for s in total_strides]
        filters = []
        for index, s in enumerate(total_strides):
            mult = stem_width_multiplier if backbone_type == "wider_resnet" and index == 0 else width_multiplier
            filters.append(int(round(s * 32 * mult)))
        stem_channels = int(round(64 * stem_width_multiplier))
        if backbone_type == "wider_resnet":
            self.stem = ConvNormAct(3, stem_channels, 3, stride=2, norm=norm)
            stem_out = stem_channels
            self.first_block_index = 0
            strides[0] = 1
            total_strides[0] = 2
        elif backbone_type == "resnet_beta":
            self.stem = InceptionStem(stem_width_multiplier, norm=norm)
            stem_out = self.stem.out_channels
            self.first_block_index = 1
        else:
            raise ValueError(f"backbone_type {backbone_type!r} is not supported; "
                             f"expected 'resnet_beta' or 'wider_resnet'")

        def size_at(stride: int) -> Tuple[int, int]:
            return scaled_size(height, stride), scaled_size(width, stride)

        common = dict(output_stride=output_stride, backbone_type=backbone_type,
                      use_axial_beyond_stride=use_axial_beyond_stride, memory_channels=memory_channels,
                      attention_bottleneck_expansion=attention_bottleneck_expansion, key_expansion=key_expansion,
                      value_expansion=value_expansion, ffn_channels=ffn_channels,
                      drop_path_keep_prob=drop_path_keep_prob, drop_path_beyond_stride=drop_path_beyond_stride,
                      drop_path_schedule=drop_path_schedule, norm=norm)
        # Channels / sizes of the stage endpoints ("stage1".."stage5"), for the decoder.
        endpoint_channels: Dict[str, int] = {"stage1": stem_out}
        channels, shape = stem_out, size_at(2)
        for index in range(self.first_block_index, 5):
            group = BlockGroup(channels, filters[index], blocks_list[index], input_shape=shape,
                               original_resnet_stride=strides[index],
                               original_resnet_input_stride=total_strides[index],
                               use_transformer_beyond_stride=backbone_use_transformer_beyond_stride,
                               transformer_expansion=expansions[index], **common)
            setattr(self, f"stage{index + 1}", group)
            channels, shape = group.out_channels, group.output_shape
            endpoint_channels[f"stage{index + 1}"] = channels
        self.endpoint_channels = dict(endpoint_channels)

        if backbone_decoder_num_stacks == 0:
            self.stage5_extra = BlockGroup(channels, filters[-1], extra_decoder_blocks_per_stage, input_shape=shape,
                                           original_resnet_stride=1, original_resnet_input_stride=32,
                                           use_transformer_beyond_stride=extra_decoder_use_transformer_beyond_stride,
                                           transformer_expansion=base_transformer_expansion, **common)
            channels = self.stage5_extra.out_channels

        # The stacked decoder, walked exactly as deeplab2's __init__ / build / call do.
        os_ = output_stride
        stride_channels: Dict[int, List[Tuple[int, Tuple[int, int]]]] = {
            min(2, os_): [(endpoint_channels["stage1"], size_at(2))],
            min(4, os_): [(endpoint_channels["stage2"], size_at(4))],
            min(8, os_): [(endpoint_channels["stage3"], size_at(8))],
            min(16, os_): [(endpoint_channels["stage4"], size_at(16))],
        }
        stride_channels[min(32, os_)] = [(channels, size_at(os_))]
        current = (channels, size_at(os_))
        self.decoder_plan: List[Tuple[int, int, bool, bool]] = []  # (stage, stride, backbone block, extra block)
        total_stacks = backbone_decoder_num_stacks + extra_decoder_num_stacks
        current_stack, stage, stride, going_down = 0, 0, os_, True
        is_backbone = backbone_decoder_num_stacks != 0
        while current_stack < total_stacks or stride > high_resolution_output_stride:
            stage += 1
            stride = stride // 2 if going_down else stride * 2
            if stride == os_:
                current_stack += 1
                going_down = True
                original_input_stride = 32
            else:
                original_input_stride = stride
            decoder_channels = int(round(original_input_stride * 64 * width_multiplier))
            expansion = base_transformer_expansion * stride / 16.0
            inputs = [current] + stride_channels[stride][-2:]
            suffix = "" if is_backbone else "_extra"
            setattr(self, f"decoder_stage{stage}{suffix}_resized_fuse",
                    ResizedFuse(inputs, decoder_channels, size_at(stride), norm=norm))
            current = (decoder_channels, size_at(stride))
            backbone_block = extra_block = False
            if is_backbone:
                group = BlockGroup(decoder_channels, decoder_channels // 4, backbone_decoder_blocks_per_stage,
                                   input_shape=size_at(stride), original_resnet_stride=1,
                                   original_resnet_input_stride=original_input_stride,
                                   use_transformer_beyond_stride=backbone_use_transformer_beyond_stride,
                                   transformer_expansion=expansion, **common)
                setattr(self, f"decoder_stage{stage}", group)
                current = (group.out_channels, size_at(stride))
                backbone_block = True
            if stride == os_ and current_stack == backbone_decoder_num_stacks:
                is_backbone = False
            if not is_backbone:
                group = BlockGroup(current[0], decoder_channels // 4, extra_decoder_blocks_per_stage,
                                   input_shape=size_at(stride), original_resnet_stride=1,
                                   original_resnet_input_stride=original_input_stride,
                                   use_transformer_beyond_stride=extra_decoder_use_transformer_beyond_stride,
                                   transformer_expansion=expansion, **common)
                setattr(self, f"decoder_stage{stage}_extra", group)
                current = (group.out_channels, size_at(stride))
                extra_block = True
            stride_channels[stride].append(current)
            self.decoder_plan.append((stage, stride, backbone_block, extra_block))
            if stride == high_resolution_output_stride:
                going_down = False
        self.panoptic_channels = current[0]
        self.semantic_channels = (self.panoptic_channels if extra_decoder_num_stacks
                                  else endpoint_channels["stage5"] if backbone_decoder_num_stacks == 0
                                  else None)  # type: ignore[assignment]
        if self.semantic_channels is None:  # backbone stacks only: the backbone output at stride 16
            self.semantic_channels = endpoint_channels["stage5"]

        self.memory_feature = nn.Parameter(torch.empty(1, num_mask_slots, memory_channels))
        trunc_normal_(self.memory_feature, 1.0)
        self.class_feature_extra = ConvNormAct(memory_channels, global_ffn_channels, 1, dim=1, norm=norm, act="relu")
        self.mask_feature_extra = ConvNormAct(memory_channels, global_ffn_channels, 1, dim=1, norm=norm, act="relu")
        self.memory_feature_channels = global_ffn_channels

    @classmethod
    def max_deeplab_s(cls, image_size: Sequence[int], **kwargs) -> "AxialResNet":
        """MaX-DeepLab-S (deeplab2 ``MaXDeepLabS``): Axial-ResNet-50 (ResNet-beta stem)."""
        return cls(image_size, **kwargs)

    @classmethod
    def max_deeplab_l(cls, image_size: Sequence[int], **kwargs) -> "AxialResNet":
        """MaX-DeepLab-L (deeplab2 ``MaXDeepLabL``): Wide-ResNet-41 with stacked decoders."""
        config = dict(num_blocks=(3, 6, 3, 3), backbone_type="wider_resnet",
                      backbone_use_transformer_beyond_stride=16, extra_decoder_use_transformer_beyond_stride=16,
                      backbone_decoder_num_stacks=1, extra_decoder_num_stacks=1, extra_decoder_blocks_per_stage=3,
                      memory_channels=512, base_transformer_expansion=2.0, global_ffn_channels=512,
                      attention_bottleneck_expansion=4, drop_path_beyond_stride=4, key_expansion=2.0,
                      value_expansion=4.0)
        config.update(kwargs)
        return cls(image_size, **config)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """Encode a normalised canvas.

        Args:
            x: ``[B, 3, H, W]`` with (H, W) = ``image_size``, already ``x/127.5 - 1``.

        Returns:
            dict with ``stage1..stage5`` (non-activated stage outputs), ``res1..res5``
            (ReLU'd), ``feature_panoptic [B, D_p, H/4, W/4]`` (ReLU'd), ``feature_semantic``
            and ``backbone_output`` (ReLU'd), ``memory [B, D_m, N]`` (final memory),
            ``transformer_class_feature`` and ``transformer_mask_feature [B, D_g, N]``.

        Raises:
            ValueError: a canvas of another size than ``image_size``.
        """
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"MaX-DeepLab was built for a {self.image_size[0]}x{self.image_size[1]} canvas "
                             f"(image_size) but got {x.shape[-2]}x{x.shape[-1]}")
        b = x.shape[0]
        # [1, N, D_m] -> [B, D_m, N]
        memory = self.memory_feature.transpose(1, 2).expand(b, -1, -1).to(x.dtype)
        endpoints: Dict[str, Tensor] = {}
        current = self.stem(x)
        endpoints["stage1"], endpoints["res1"] = current, F.relu(current)
        for index in range(self.first_block_index, 5):
            current, memory = getattr(self, f"stage{index + 1}")(current, memory)
            endpoints[f"stage{index + 1}"], endpoints[f"res{index + 1}"] = current, F.relu(current)
        activated = endpoints["res5"]
        os_ = self.output_stride
        backbone_output = activated
        if self.backbone_decoder_num_stacks == 0:
            current, memory = self.stage5_extra(current, memory)
        stride_features: Dict[int, List[Tensor]] = {
            min(2, os_): [endpoints["stage1"]], min(4, os_): [endpoints["stage2"]],
            min(8, os_): [endpoints["stage3"]], min(16, os_): [endpoints["stage4"]]}
        stride_features[min(32, os_)] = [current]
        high_resolution: List[Tensor] = []
        for stage, stride, backbone_block, extra_block in self.decoder_plan:
            inputs = [current] + stride_features[stride][-2:]
            suffix = "_extra" if not backbone_block else ""
            current = getattr(self, f"decoder_stage{stage}{suffix}_resized_fuse")(inputs)
            if backbone_block:
                current, memory = getattr(self, f"decoder_stage{stage}")(current, memory)
                if stride == os_ and extra_block:  # the backbone's stacks end here
                    backbone_output = F.relu(current)
            if extra_block:
                current, memory = getattr(self, f"decoder_stage{stage}_extra")(current, memory)
            stride_features[stride].append(current)
            if stride == self.high_resolution_output_stride:
                high_resolution.append(F.relu(current))
        endpoints["memory"] = memory
        endpoints["transformer_class_feature"] = self.class_feature_extra(memory)
        endpoints["transformer_mask_feature"] = self.mask_feature_extra(memory)
        endpoints["feature_panoptic"] = high_resolution[-1]
        endpoints["feature_semantic"] = (high_resolution[self.backbone_decoder_num_stacks]
                                         if self.extra_decoder_num_stacks else backbone_output)
        endpoints["backbone_output"] = backbone_output
        return endpoints
