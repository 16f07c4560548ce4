"""K-Net's kernel initialisation head (``ConvKernelHead``, config key ``rpn_head``; knet.md §4).

From the localisation FPN's stride-8 maps ``loc`` and ``sem``:

* ``loc' = loc_conv(loc)``, ``sem' = seg_conv(sem)`` (1×1 conv + GN + ReLU each);
* thing masks ``M0 = init_kernels(loc')`` (bias-free 1×1 conv, N_thing kernels, init
  normal std 1.0);
* semantic logits ``S = conv_seg(sem')`` (C classes, bias −log(99), weight std 0.01);
* ``x_feats = sem' + loc'``, the map every update stage reads;
* thing kernels: the ``init_kernels`` weight (cloned, not detached) plus, per kernel, the
  *sum* of ``x_feats`` over the pixels where ``σ(M0) > 0.5`` (binary, no gradient through
  the mask);
* with ``num_stuff > 0`` (panoptic), the last ``num_stuff`` rows of ``conv_seg`` are
  appended as stuff kernels and the matching channels of ``S`` as their masks.

Source: ZwwWayne/K-Net ``knet/det/kernel_head.py`` (``_decode_init_proposals``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from kmax_deeplab.modeling.knet.neck import ConvGNReLU, LocalizationFPN

__all__ = ["KernelHeadOutput", "KernelInitHead", "prior_bias"]


def prior_bias(prior: float = 0.01) -> float:
    """``-log((1 - p) / p)``: the logit of a sigmoid prior (0.01 -> -4.595; mmcv ``bias_init_with_prob``)."""
    return float(-math.log((1 - prior) / prior))


class KernelHeadOutput(NamedTuple):
    """Output of :class:`KernelInitHead`.

    Attributes:
        kernels: ``[B, N, D]`` initial kernels, N = num_thing (+ num_stuff).
        masks: ``[B, N, h, w]`` stride-8 mask logits: M0 (+ the stuff channels of S).
        thing_masks: ``[B, num_thing, h, w]`` M0 alone (kernel-head losses).
        semantic_logits: ``[B, C, h, w]`` S.
        x_feats: ``[B, D, h, w]`` ``loc' + sem'``.
    """

    kernels: Tensor
    masks: Tensor
    thing_masks: Tensor
    semantic_logits: Tensor
    x_feats: Tensor


class KernelInitHead(nn.Module):
    """Localisation FPN + initial kernels and masks (see the module docstring).

    Args:
        num_classes: C, channels of ``conv_seg`` (panoptic COCO 133, instance 80).
        num_kernels: N_thing, learned thing kernels (100).
        num_stuff: stuff kernels taken from the last rows of ``conv_seg`` (panoptic 53,
            instance 0).
        in_channels: FPN width (256).
        channels: D, kernel and feature width (256).
        num_groups: GroupNorm groups (32).
        kernel_init_std: std of the ``init_kernels`` normal init (1.0, knet.md §12).

    Raises:
        ValueError: ``num_stuff > num_classes``.
    """

    def __init__(self, num_classes: int, *, num_kernels: int = 100, num_stuff: int = 0,
                 in_channels: int = 256, channels: int = 256, num_groups: int = 32,
                 kernel_init_std: float = 1.0) -> None:
        super().__init__()
        if not 0 <= num_stuff <= num_classes:
            raise ValueError(f"num_stuff must be in [0, num_classes={num_classes}], got {num_stuff}")
        self.num_classes = num_classes
        self.num_kernels = num_kernels
        self.num_stuff = num_stuff
        self.channels = channels
        self.localization_fpn = LocalizationFPN(in_channels, channels, num_groups=num_groups)
        self.loc_conv = ConvGNReLU(channels, channels, 1, num_groups=num_groups)
        self.seg_conv = ConvGNReLU(channels, channels, 1, num_groups=num_groups)
        self.init_kernels = nn.Conv2d(channels, num_kernels, 1, bias=False)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.init_kernels.weight, std=kernel_init_std)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.constant_(self.conv_seg.bias, prior_bias(0.01))

    def forward(self, features: list[Tensor]) -> KernelHeadOutput:
        """Initial kernels and masks from P2..P5 (``[B, in_channels, H/4·2^-i, ...]``).

        Returns:
            :class:`KernelHeadOutput`, maps at stride 8.
        """
        loc, sem = self.localization_fpn(features)
        loc = self.loc_conv(loc)
        sem = self.seg_conv(sem)
        thing_masks = self.init_kernels(loc)  # [B, N_thing, h, w]
        semantic_logits = self.conv_seg(sem)  # [B, C, h, w]
        x_feats = sem + loc
        batch = loc.shape[0]
        # [N_thing, D, 1, 1] -> [B, N_thing, D]; clone keeps the gradient path to the weight.
        kernels = self.init_kernels.weight.clone().flatten(1)[None].expand(batch, -1, -1)
        binary = (thing_masks.sigmoid() > 0.5).to(x_feats.dtype)
        kernels = kernels + torch.einsum("bnhw,bchw->bnc", binary, x_feats)
        masks = thing_masks
        if self.num_stuff:
            stuff = self.conv_seg.weight[self.num_classes - self.num_stuff:].clone().flatten(1)
            kernels = torch.cat([kernels, stuff[None].expand(batch, -1, -1)], dim=1)
            masks = torch.cat([thing_masks, semantic_logits[:, self.num_classes - self.num_stuff:]], 1)
        return KernelHeadOutput(kernels, masks, thing_masks, semantic_logits, x_feats)
