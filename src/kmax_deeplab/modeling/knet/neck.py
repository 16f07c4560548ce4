"""K-Net's necks: the mmdet FPN and the semantic-FPN "localisation FPN" (knet.md §2, §3).

* :class:`FPN` maps backbone ``res2..res5`` to P2..P5 (256 channels, strides 4..32):
  1×1 lateral convs and 3×3 output convs, both with bias and no norm, nearest-neighbour
  top-down upsampling to the finer level's size (mmdet ``necks/fpn.py`` with
  ``num_outs=4``: no extra level).
* :class:`LocalizationFPN` fuses P2..P5 at stride 8 (K-Net
  ``knet/det/semantic_fpn_wrapper.py``, ``upsample_times=2``, ``end_level=3``): every conv is
  3×3, GroupNorm(32), ReLU; P5 first gets a DETR sine positional encoding; the four level
  maps are summed and two 1×1 conv + GN + ReLU heads give the "loc" and "sem" maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN", "ConvGNReLU", "LocalizationFPN", "sine_positional_encoding"]

#: mmcv's GroupNorm / LayerNorm eps (K-Net keeps torch's default everywhere, knet.md §13).
NORM_EPS = 1e-5


class FPN(nn.Module):
    """Feature pyramid (Lin et al., 2017) as mmdet 2.x builds it for K-Net.

    Args:
        in_channels: channels of the inputs, finest first (ResNet: 256, 512, 1024, 2048).
        out_channels: channels of every output (256).

    Input: list of ``[B, in_channels[i], H_i, W_i]`` maps, finest first (strides 4..32).
    Output: list of ``[B, out_channels, H_i, W_i]`` maps P2..P5, same sizes.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        # mmdet FPN init_cfg: Xavier uniform on every Conv2d, zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """P2..P5 of the inputs (see the class docstring).

        Raises:
            ValueError: the number of inputs differs from ``len(in_channels)``.
        """
        if len(features) != len(self.lateral_convs):
            raise ValueError(f"FPN expects {len(self.lateral_convs)} inputs, got {len(features)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        return [conv(x) for conv, x in zip(self.output_convs, laterals)]


class ConvGNReLU(nn.Module):
    """Bias-free conv + GroupNorm + ReLU (mmcv ``ConvModule`` with ``norm_cfg=GN``).

    Keys: ``conv.weight`` ``[D_out, D_in, k, k]``, ``norm.{weight,bias}`` ``[D_out]``.
    Init: conv weight normal(0, 0.01) (K-Net ``normal_init`` for these convs).

    Args:
        in_channels, out_channels: D_in, D_out.
        kernel_size: 1 or 3 (padding ``k // 2``).
        stride: conv stride.
        num_groups: GroupNorm groups (32).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                 stride: int = 1, num_groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(num_groups, out_channels, eps=NORM_EPS)
        nn.init.normal_(self.conv.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D_in, H, W]`` -> ``[B, D_out, ceil(H/stride), ceil(W/stride)]``."""
        return F.relu(self.norm(self.conv(x)))


def sine_positional_encoding(batch: int, height: int, width: int, *, num_feats: int = 128,
                             temperature: float = 10000.0, device=None,
                             dtype: torch.dtype = torch.float32) -> Tensor:
    """DETR's 2-D sine positional encoding over an unpadded map (mmdet ``SinePositionalEncoding``).

    Positions are 1..H and 1..W, normalised as ``p / (last + 1e-6) · 2π``; channel ``2i`` is
    ``sin(p / T^(2i/F))`` and ``2i+1`` is ``cos(p / T^(2i/F))``, y channels first, then x.

    Args:
        batch, height, width: B, H, W.
        num_feats: F, channels per axis (128: 256 in total).
        temperature: T (10000).

    Returns:
        ``[B, 2F, H, W]`` tensor of ``dtype``.
    """
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    scale = 2 * math.pi
    y = y / (y[-1] + 1e-6) * scale
    x = x / (x[-1] + 1e-6) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(p: Tensor) -> Tensor:  # [L] -> [L, F] interleaved sin/cos
        v = p[:, None] / dim_t
        return torch.stack((v[:, 0::2].sin(), v[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
    return pos[None].expand(batch, -1, -1, -1).to(dtype)


class LocalizationFPN(nn.Module):
    """Semantic-FPN fusion of P2..P5 at stride 8, with "loc" and "sem" heads (knet.md §3).

    Levels (``levels.{L}.{j}`` are :class:`ConvGNReLU`; "up" is bilinear ×2,
    align_corners False):

    ======  =====  ============================================
    level   input  path to stride 8
    ======  =====  ============================================
    0       P2     conv stride 2
    1       P3     conv
    2       P4     conv, up, conv
    3       P5     + sine encoding; conv, up, conv, up, conv
    ======  =====  ============================================

    Args:
        in_channels: channels of P2..P5 (256).
        channels: width of every conv and of both outputs (256).
        num_groups: GroupNorm groups (32).
        positional_encoding: add the sine encoding to P5 (K-Net: True).

    Input: P2..P5, ``[B, in_channels, H/4, W/4]`` .. ``[B, in_channels, H/32, W/32]``
    (each level exactly half its finer neighbour, as padding to a multiple of 32 gives).
    Output: ``(loc, sem)``, each ``[B, channels, H/8, W/8]``.
    """

    def __init__(self, in_channels: int = 256, channels: int = 256, *, num_groups: int = 32,
                 positional_encoding: bool = True) -> None:
        super().__init__()
        self.positional_encoding = positional_encoding
        self.levels = nn.ModuleList([
            nn.Sequential(ConvGNReLU(in_channels, channels, 3, stride=2, num_groups=num_groups)),
            nn.Sequential(ConvGNReLU(in_channels, channels, 3, num_groups=num_groups)),
            nn.Sequential(ConvGNReLU(in_channels, channels, 3, num_groups=num_groups),
                          nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                          ConvGNReLU(channels, channels, 3, num_groups=num_groups)),
            nn.Sequential(ConvGNReLU(in_channels, channels, 3, num_groups=num_groups),
                          nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                          ConvGNReLU(channels, channels, 3, num_groups=num_groups),
                          nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                          ConvGNReLU(channels, channels, 3, num_groups=num_groups)),
        ])
        self.loc_out = ConvGNReLU(channels, channels, 1, num_groups=num_groups)
        self.sem_out = ConvGNReLU(channels, channels, 1, num_groups=num_groups)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``(loc, sem)`` at stride 8 (see the class docstring).

        Raises:
            ValueError: not four inputs, or level sizes that do not fuse (image not padded
                to a multiple of 32).
        """
        if len(features) != 4:
            raise ValueError(f"LocalizationFPN expects P2..P5 (4 maps), got {len(features)}")
        p5 = features[3]
        if self.positional_encoding:
            b, _, h, w = p5.shape
            p5 = p5 + sine_positional_encoding(b, h, w, num_feats=p5.shape[1] // 2,
                                               device=p5.device, dtype=p5.dtype)
        outs = [level(x) for level, x in zip(self.levels, list(features[:3]) + [p5])]
        if len({tuple(o.shape[-2:]) for o in outs}) != 1:
            raise ValueError("LocalizationFPN: level outputs have sizes "
                             f"{[tuple(o.shape[-2:]) for o in outs]}; pad the image to a "
                             "multiple of 32")
        fused = outs[0] + outs[1] + outs[2] + outs[3]
        return self.loc_out(fused), self.sem_out(fused)
