"""ResNet backbones of kMaX-DeepLab in two layouts with one key naming (spec §1.1, §5.1, §5.2).

``layout="bytedance"`` (BD, detectron2/torchvision style; the default)
    Stem: 7×7/2 conv + BN + ReLU, then a 3×3/2 max-pool (padding 1); "stem" is the
    post-max-pool output (64 channels, stride 4; BD's Cityscapes stem skip is stride 4).
    Bottleneck blocks are post-activation (``relu(branch + shortcut)``); the stride of a stage
    sits in the 3×3 conv (``stride_in_1x1=False``); res2 starts at stride 4 without a stride.
    Source: bytedance/kmax-deeplab ``kmax_deeplab/modeling/backbone/resnet.py`` (detectron2's
    ``BasicStem`` and ``BottleneckBlock``).

``layout="deeplab2"`` (TF, ``axial_resnet_instances.ResNet50``)
    Stem: 7×7/2 conv + BN, *no* activation and *no* max-pool; "stem" is that un-activated
    output (64 channels, stride 2). Stage 2's first block carries the stride 2 in its 3×3 conv
    and its 1×1 shortcut. Blocks are pre-activation: ``y = branch(relu(x)) + shortcut(relu(x))``
    (``AxialBlock.call`` activates its input; the shortcut starts from the activated input), so
    every endpoint res2..res5 is the un-activated sum that deeplab2's pixel decoder reads
    (``stage2``..``stage5`` endpoints, ``axial_resnet.call_encoder_before_stacked_decoder``).
    The last BN of each residual branch starts with γ = 0 (``bn_gamma_initializer='zeros'``).
    Strided TF convs pad symmetrically by ``(k - 1) // 2`` (``Conv2DSame``), i.e. PyTorch
    ``padding=k // 2``.

Both layouts use the keys ``stem.conv1.{weight,norm.*}`` and
``res{2..5}.{b}.{conv1,conv2,conv3,shortcut}.{weight,norm.*}`` (shortcut only in block 0), so a
TF checkpoint maps ``encoder/_stem`` -> ``stem.conv1`` and ``encoder/_stage{s}/_block{b}/…`` ->
``res{s}.{b-1}.…`` (spec §5.2). Every BN has eps 1e-3, momentum 0.01 (see ``conv_norm``).
Neither reference applies stochastic depth to the ResNet-50 backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.backbones.base import Backbone, FeatureSpec, check_feature_info
from kmax_deeplab.modeling.backbones.conv_norm import Conv2dNorm, resnet_norm
from kmax_deeplab.modeling.layers.deform_conv import DCN_TYPES, DeformConv2dPack
from kmax_deeplab.modeling.layers.norm import BN_EPS, BN_MOMENTUM

LAYOUTS: tuple[str, ...] = ("bytedance", "deeplab2")


class DeformConv2dNorm(DeformConv2dPack):
    """A bias-free deformable 3×3 conv followed by its ``norm`` child (mmdet ``dcn=dict(type=...)``).

    ``kind="DCN"`` is mmcv's ``DeformConv2dPack`` (v1), ``"DCNv2"`` its
    ``ModulatedDeformConv2dPack``; see :mod:`kmax_deeplab.modeling.layers.deform_conv`. Keys:
    ``weight`` ``[D_out, D_in, k, k]``, ``conv_offset.{weight,bias}`` (zero-initialised: the
    layer starts as the plain conv) and ``norm.*``, so a plain ``Conv2dNorm``'s ``weight`` and
    ``norm`` load into it unchanged.

    Raises:
        ValueError: unknown ``kind``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, kind: str = "DCN",
                 stride: int = 1, padding: int = 0, dilation: int = 1, deform_groups: int = 1,
                 norm: str = "BN", bn_eps: float = BN_EPS, bn_momentum: float = BN_MOMENTUM) -> None:
        if kind not in DCN_TYPES:
            raise ValueError(f"unknown deformable conv type {kind!r}; expected one of {tuple(DCN_TYPES)}")
        self.modulated = DCN_TYPES[kind].modulated
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, deform_groups=deform_groups)
        self.kind = kind
        self.norm = resnet_norm(norm, out_channels, eps=bn_eps, momentum=bn_momentum)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # as Conv2dNorm

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D_in, H, W]`` -> ``[B, D_out, H', W']`` (deformable convolution, then norm)."""
        return self.norm(super().forward(x))


class BottleneckBlock(nn.Module):
    """Post-activation bottleneck (BD / detectron2, ``stride_in_1x1=False``).

    ``y = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`` with the
    stride in the 3×3 ``conv2``; ``shortcut`` is a strided 1×1 conv + BN when the channels
    change, else the identity.

    Args:
        in_channels: D_in.
        out_channels: D_out (4 × bottleneck in ResNet-50).
        bottleneck_channels: width of conv1/conv2.
        stride: 1 or 2, applied by conv2 and the shortcut.
        norm: norm after each conv (see ``conv_norm.resnet_norm``).
        bn_eps, bn_momentum: batch-norm constants (kMaX 1e-3/0.01, mmdet 1e-5/0.1).
        dilation: dilation (and padding) of the 3×3 ``conv2`` (mmseg's dilated ResNets).
        dcn: None, or ``"DCN"`` / ``"DCNv2"``: ``conv2`` is a :class:`DeformConv2dNorm`
            (mmdet ``dcn=dict(type=..., fallback_on_stride=False)``: strided blocks too).
        deform_groups: offset groups of the deformable ``conv2`` (mmdet ``deform_groups``).
    """

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int,
                 stride: int = 1, norm: str = "BN", bn_eps: float = BN_EPS,
                 bn_momentum: float = BN_MOMENTUM, dilation: int = 1, dcn: str | None = None,
                 deform_groups: int = 1) -> None:
        super().__init__()
        self.stride = stride
        bn = dict(norm=norm, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.shortcut = (Conv2dNorm(in_channels, out_channels, 1, stride=stride, **bn)
                         if in_channels != out_channels else None)
        if self.shortcut is None and stride != 1:
            raise ValueError("a strided block needs a projection shortcut "
                             f"(in_channels == out_channels == {in_channels}, stride {stride})")
        self.conv1 = Conv2dNorm(in_channels, bottleneck_channels, 1, **bn)
        if dcn is None:
            self.conv2 = Conv2dNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride,
                                    padding=dilation, dilation=dilation, **bn)
        else:
            self.conv2 = DeformConv2dNorm(bottleneck_channels, bottleneck_channels, 3, kind=dcn, stride=stride,
                                          padding=dilation, dilation=dilation, deform_groups=deform_groups, **bn)
        self.conv3 = Conv2dNorm(bottleneck_channels, out_channels, 1, **bn)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D_in, H, W]`` -> ``[B, D_out, ceil(H/s), ceil(W/s)]``, after ReLU."""
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class PreActBottleneckBlock(BottleneckBlock):
    """Pre-activation bottleneck of deeplab2 (``axial_blocks.AxialBlock``, no attention).

    ``a = relu(x)``; ``y = bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(a))))))) + shortcut(a)``;
    the output is *not* activated. Same sub-modules and keys as :class:`BottleneckBlock`;
    ``conv3.norm.weight`` (γ) starts at 0 as in deeplab2.
    """

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int,
                 stride: int = 1, norm: str = "BN", bn_eps: float = BN_EPS,
                 bn_momentum: float = BN_MOMENTUM) -> None:
        super().__init__(in_channels, out_channels, bottleneck_channels=bottleneck_channels,
                         stride=stride, norm=norm, bn_eps=bn_eps, bn_momentum=bn_momentum)
        gamma = getattr(self.conv3.norm, "weight", None)
        if isinstance(gamma, nn.Parameter):
            nn.init.zeros_(gamma)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D_in, H, W]`` -> ``[B, D_out, ceil(H/s), ceil(W/s)]``, un-activated."""
        x = F.relu(x)
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return out + shortcut


class DeepStem(nn.Module):
    """ResNetV1c deep stem (mmseg ``ResNetV1c``, ``deep_stem=True``; Bag of Tricks §4.1).

    Three 3×3 conv + norm + ReLU (``conv1``: 3 -> D/2, stride 2; ``conv2``: D/2 -> D/2;
    ``conv3``: D/2 -> D), then a 3×3/2 max-pool (padding 1): output stride 4, activated.
    mmseg's ``stem.{0,1,3,4,6,7}`` are ``conv{1,2,3}.{weight,norm.*}`` here.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "BN",
                 bn_eps: float = BN_EPS, bn_momentum: float = BN_MOMENTUM) -> None:
        super().__init__()
        bn = dict(norm=norm, bn_eps=bn_eps, bn_momentum=bn_momentum)
        half = out_channels // 2
        self.conv1 = Conv2dNorm(in_channels, half, 3, stride=2, padding=1, **bn)
        self.conv2 = Conv2dNorm(half, half, 3, padding=1, **bn)
        self.conv3 = Conv2dNorm(half, out_channels, 3, padding=1, **bn)
        self.max_pool = True
        self.out_channels = out_channels
        self.stride = 4

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, D, ceil(H/4), ceil(W/4)]``."""
        x = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNetStem(nn.Module):
    """7×7/2 conv + norm (``conv1``), then either ReLU + 3×3/2 max-pool (BD) or nothing (TF).

    Args:
        in_channels: 3 for RGB.
        out_channels: stem width (64 in ResNet-50).
        max_pool: True for BD (output stride 4, activated), False for deeplab2 (stride 2,
            un-activated).
        norm: see ``conv_norm.resnet_norm``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, max_pool: bool,
                 norm: str = "BN", bn_eps: float = BN_EPS, bn_momentum: float = BN_MOMENTUM) -> None:
        super().__init__()
        self.conv1 = Conv2dNorm(in_channels, out_channels, 7, stride=2, padding=3, norm=norm,
                                bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.max_pool = max_pool
        self.out_channels = out_channels
        self.stride = 4 if max_pool else 2

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, D, ceil(H/stride), ceil(W/stride)]``."""
        x = self.conv1(x)
        if self.max_pool:
            x = F.max_pool2d(F.relu(x), kernel_size=3, stride=2, padding=1)
        return x

    def extra_repr(self) -> str:
        return f"max_pool={self.max_pool}, stride={self.stride}"


class ResNet(Backbone):
    """Bottleneck ResNet with outputs stem, res2..res5 (spec §1.1).

    Args:
        depths: blocks per stage res2..res5, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        stem_channels: stem width (64).
        bottleneck_channels: conv1/conv2 width per stage, e.g. ``(64, 128, 256, 512)``;
            each stage outputs 4× as many channels.
        layout: ``"bytedance"`` (post-activation, max-pool stem) or ``"deeplab2"``
            (pre-activation, no max-pool, stride 2 in res2); see the module docstring.
        norm: ``"BN"``, ``"SyncBN"``, ``"FrozenBN"`` or ``"none"``.
        in_channels: input channels (3).
        bn_eps, bn_momentum: batch-norm constants: kMaX 1e-3 / 0.01 (default); mmdet and
            torchvision (K-Net) 1e-5 / 0.1.
        frozen_stages: mmdet ``frozen_stages``: -1 freezes nothing; s >= 0 freezes the stem
            and res2..res{s+1} (K-Net: 1 = stem + res2): their parameters get
            ``requires_grad=False`` and their batch norms stay in eval mode.
        norm_eval: mmdet ``norm_eval``: every batch norm stays in eval mode (running
            statistics frozen) even in ``train()``; its affine parameters still train.
        deep_stem: the ResNetV1c stem (:class:`DeepStem`; bytedance layout only).
        strides: stride of each stage's first block, res2..res5; None: (1, 2, 2, 2) for
            bytedance, (2, 2, 2, 2) for deeplab2. mmseg's D8 models: (1, 2, 1, 1).
        dilations: dilation of each stage's 3×3 convs, res2..res5 (mmseg D8: 1, 1, 2, 4).
        contract_dilation: mmseg ``contract_dilation``: the first block of a stage with
            dilation d > 1 uses d // 2.
        dcn: None, or ``"DCN"`` (mmcv ``DeformConv2dPack``, v1) / ``"DCNv2"`` (modulated): the
            3×3 ``conv2`` of every block of the stages flagged in ``stage_with_dcn`` is
            deformable (mmdet ``dcn=dict(type=dcn, deform_groups=deform_groups,
            fallback_on_stride=False)``; bytedance layout only).
        stage_with_dcn: res2..res5 flags (mmdet's; K-Net R-101-DCN: False, True, True, True).
        deform_groups: offset groups of those convs (1).

    Raises:
        ValueError: unknown layout, norm or ``dcn``, depths/widths/strides/dilations/
            ``stage_with_dcn`` of different lengths, ``frozen_stages`` outside [-1, 4], or
            ``deep_stem`` / dilation / ``dcn`` with the deeplab2 layout.
    """

    def __init__(self, depths: Sequence[int], *, stem_channels: int = 64,
                 bottleneck_channels: Sequence[int] = (64, 128, 256, 512),
                 layout: str = "bytedance", norm: str = "BN", in_channels: int = 3,
                 bn_eps: float = BN_EPS, bn_momentum: float = BN_MOMENTUM,
                 frozen_stages: int = -1, norm_eval: bool = False, deep_stem: bool = False,
                 strides: Sequence[int] | None = None, dilations: Sequence[int] = (1, 1, 1, 1),
                 contract_dilation: bool = False, dcn: str | None = None,
                 stage_with_dcn: Sequence[bool] = (False, False, False, False), deform_groups: int = 1) -> None:
        super().__init__()
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        bn = dict(norm=norm, bn_eps=bn_eps, bn_momentum=bn_momentum)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown ResNet layout {layout!r}; expected one of {LAYOUTS}")
        if len(depths) != 4 or len(bottleneck_channels) != 4:
            raise ValueError(f"need 4 stages, got depths {tuple(depths)} and widths "
                             f"{tuple(bottleneck_channels)}")
        self.layout = layout
        bytedance = layout == "bytedance"
        if not bytedance and (deep_stem or tuple(dilations) != (1, 1, 1, 1)):
            raise ValueError("deep_stem and dilations need layout='bytedance'")
        if len(dilations) != 4 or (strides is not None and len(strides) != 4):
            raise ValueError(f"need 4 stages, got strides {strides} and dilations {tuple(dilations)}")
        if dcn is not None and (dcn not in DCN_TYPES or not bytedance or len(stage_with_dcn) != 4):
            raise ValueError(f"dcn={dcn!r} needs layout='bytedance', one of {tuple(DCN_TYPES)} and 4 "
                             f"stage_with_dcn flags (got layout {layout!r}, {tuple(stage_with_dcn)})")
        block_cls = BottleneckBlock if bytedance else PreActBottleneckBlock
        self.stem = (DeepStem(in_channels, stem_channels, **bn) if deep_stem
                     else ResNetStem(in_channels, stem_channels, max_pool=bytedance, **bn))

        info = [FeatureSpec("stem", stem_channels, self.stem.stride)]
        stride, channels = self.stem.stride, stem_channels
        # BD: res2 keeps stride 4 (the max-pool took it); TF: res2 strides 2 -> 4.
        first_strides = tuple(strides) if strides is not None else (
            (1, 2, 2, 2) if bytedance else (2, 2, 2, 2))
        for i, (depth, width, first, dil) in enumerate(
                zip(depths, bottleneck_channels, first_strides, dilations)):
            blocks = []
            for b in range(depth):
                d = dil // 2 if (b == 0 and contract_dilation and dil > 1) else dil
                extra = {"dilation": d} if d != 1 else {}
                if dcn is not None and stage_with_dcn[i]:
                    extra.update(dcn=dcn, deform_groups=deform_groups)
                blocks.append(block_cls(channels, 4 * width, bottleneck_channels=width,
                                        stride=first if b == 0 else 1, **bn, **extra))
                channels = 4 * width
            stride *= first
            self.add_module(f"res{i + 2}", nn.Sequential(*blocks))
            info.append(FeatureSpec(f"res{i + 2}", channels, stride))
        self.feature_info = check_feature_info(info)
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def _frozen_modules(self) -> list[nn.Module]:
        """The stem and res2..res{frozen_stages+1} (mmdet ``_freeze_stages``)."""
        if self.frozen_stages < 0:
            return []
        return [self.stem] + [getattr(self, f"res{s + 2}") for s in range(self.frozen_stages)]

    def train(self, mode: bool = True) -> "ResNet":
        """``nn.Module.train``, then frozen stages (and all BNs if ``norm_eval``) back to eval."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features of a normalised image batch.

        Args:
            x: ``[B, 3, H, W]`` float, already normalised.

        Returns:
            ``{"stem", "res2", ..., "res5"}`` -> ``[B, D, ceil(H/s), ceil(W/s)]`` with D and s
            from ``feature_info``. BD: all after ReLU; deeplab2: all un-activated.

        Raises:
            ValueError: ``x`` is not ``[B, 3, H, W]`` floating point.
        """
        self._check_input(x)
        out = {"stem": self.stem(x)}
        x = out["stem"]
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            out[name] = x
        return out


def resnet50(*, norm: str = "BN", layout: str = "bytedance") -> ResNet:
    """ResNet-50 (depths 3, 4, 6, 3; outputs 256/512/1024/2048 channels; 23.5 M parameters)."""
    return ResNet((3, 4, 6, 3), stem_channels=64, bottleneck_channels=(64, 128, 256, 512),
                  layout=layout, norm=norm)


def resnet101(*, norm: str = "BN", layout: str = "bytedance", **kwargs) -> ResNet:
    """ResNet-101 (depths 3, 4, 23, 3; outputs 256/512/1024/2048 channels; 42.5 M parameters).

    ``kwargs`` go to :class:`ResNet` (``bn_eps``, ``frozen_stages``, ``norm_eval``).
    """
    return ResNet((3, 4, 23, 3), stem_channels=64, bottleneck_channels=(64, 128, 256, 512),
                  layout=layout, norm=norm, **kwargs)


def resnet_mmdet(depth: int = 50, *, frozen_stages: int = 1, norm_eval: bool = True,
                 norm: str = "BN", dcn: str | None = None,
                 stage_with_dcn: Sequence[bool] = (False, True, True, True)) -> ResNet:
    """The torchvision / mmdet ``style='pytorch'`` ResNet that K-Net uses (knet.md §2).

    Same topology as the bytedance layout (post-activation bottlenecks, stride on the 3×3
    conv, max-pool stem), with torchvision's batch-norm constants (eps 1e-5, momentum 0.1),
    mmdet's ``frozen_stages`` (1: stem + res2 frozen) and ``norm_eval`` (BN statistics never
    updated). mmdet's key names (``conv1``, ``bn1``, ``layer1``…) are mapped by
    :mod:`kmax_deeplab.checkpoints.mmdet`.

    Args:
        depth: 50 or 101 (``tiny`` builds are for tests: use :func:`resnet_tiny`).
        frozen_stages, norm_eval, norm: see :class:`ResNet`.
        dcn, stage_with_dcn: deformable ``conv2`` (see :class:`ResNet`); K-Net's R-101-DCN
            configs (``knet_s3_r101_dcn-c3-c5_*``) use ``"DCN"`` in res3..res5.

    Raises:
        ValueError: another depth.
    """
    depths = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
    if depth not in depths:
        raise ValueError(f"resnet_mmdet: depth must be 50 or 101, got {depth}")
    return ResNet(depths[depth], layout="bytedance", norm=norm, bn_eps=1e-5, bn_momentum=0.1,
                  frozen_stages=frozen_stages, norm_eval=norm_eval, dcn=dcn,
                  stage_with_dcn=tuple(stage_with_dcn))


def resnet_v1c(depth: int = 50, *, dilated: bool = True, norm: str = "BN",
               frozen_stages: int = -1, norm_eval: bool = False) -> ResNet:
    """mmseg's ``ResNetV1c`` (deep stem, ``style='pytorch'``, BN eps 1e-5 / momentum 0.1),
    as the K-Net semantic configs build it (``configs/seg/knet/*_r50-d8_*.py``).

    Args:
        depth: 50 or 101.
        dilated: True: output stride 8 (strides 1/2/1/1, dilations 1/1/2/4,
            ``contract_dilation``: FCN, PSPNet, DeepLabv3); False: output stride 32
            (strides 1/2/2/2, no dilation: the UPerNet config, despite its "d8" name).
        norm: ``"BN"`` / ``"SyncBN"`` (the configs' ``SyncBN``) / ``"FrozenBN"``.
        frozen_stages, norm_eval: see :class:`ResNet` (the configs: -1, False).

    Raises:
        ValueError: another depth.
    """
    depths = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
    if depth not in depths:
        raise ValueError(f"resnet_v1c: depth must be 50 or 101, got {depth}")
    geometry = (dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True) if dilated
                else dict(strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1), contract_dilation=True))
    return ResNet(depths[depth], layout="bytedance", norm=norm, bn_eps=1e-5, bn_momentum=0.1,
                  frozen_stages=frozen_stages, norm_eval=norm_eval, deep_stem=True, **geometry)


def resnet_tiny(*, norm: str = "BN", layout: str = "bytedance", **kwargs) -> ResNet:
    """A tiny BD-layout ResNet for tests and the demo.

    One block per stage, 16-channel stem, bottleneck widths 8/16/32/64, so the outputs have
    32/64/128/256 channels.
    """
    return ResNet((1, 1, 1, 1), stem_channels=16, bottleneck_channels=(8, 16, 32, 64),
                  layout=layout, norm=norm, **kwargs)


__all__ = ["LAYOUTS", "BottleneckBlock", "DeepStem", "DeformConv2dNorm", "PreActBottleneckBlock", "ResNet", "ResNetStem",
           "resnet50", "resnet101", "resnet_mmdet", "resnet_tiny", "resnet_v1c"]
