"""Deformable convolution v1 and v2 in plain PyTorch (no compiled op).

Deformable ConvNets (Dai et al., ICCV 2017; v2 "modulated": Zhu et al., CVPR 2019, §3.1) as
mmcv 1.7.2 computes them (``mmcv/ops/deform_conv.py`` ``DeformConv2dPack``, registered as
``"DCN"``; ``mmcv/ops/modulated_deform_conv.py`` ``ModulatedDeformConv2dPack``, ``"DCNv2"``;
kernels ``ops/csrc/common/cuda/{deform_conv,modulated_deform_conv}_cuda_kernel.cuh`` and
``ops/csrc/pytorch/cpu/modulated_deform_conv.cpp``):

* output pixel ``(ho, wo)`` and kernel point ``p = i * kw + j`` sample the input at
  ``h = ho * stride_h - pad_h + i * dilation_h + Δh`` and
  ``w = wo * stride_w - pad_w + j * dilation_w + Δw`` (pixel units, fp32);
* the offset tensor ``[B, G * 2 * kh * kw, Ho, Wo]`` holds, for deformable group ``g``, ``Δh`` in
  channel ``g * 2K + 2p`` and ``Δw`` in channel ``g * 2K + 2p + 1`` (interleaved ``y, x`` per
  kernel point, ``K = kh * kw``);
* the sample is bilinear with zero outside the image: each of the four neighbours outside
  ``[0, H-1] x [0, W-1]`` contributes 0 (the kernels' ``h > -1 && h < H`` test is implied);
* v2 multiplies each sample by its modulation scalar ``mask[:, g * K + p]`` (the pack applies a
  sigmoid to the last third of ``conv_offset``'s output: channels ``[o1 | o2 | mask]``, offset
  ``= cat(o1, o2)``);
* input channels are split into ``G`` deformable groups of ``C / G`` channels each sharing one
  offset field; ``groups`` is the ordinary grouped-convolution split of the weight.

The implementation is vectorised: one ``gather`` per bilinear neighbour builds the im2col matrix
``[B, C, K, Ho*Wo]``, then a (grouped) matrix product with the weight. Gradients come from autograd
(the bilinear weights are differentiable in the offsets, ``floor`` is not), so they equal the
kernels' analytic ones away from integer sample positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = ["DeformConv2dPack", "ModulatedDeformConv2dPack", "deform_conv2d", "DCN_TYPES", "build_dcn"]


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - (dil * (k - 1) + 1)) // stride + 1


def deform_conv2d(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                  mask: Tensor | None = None, stride: int | tuple[int, int] = 1,
                  padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                  groups: int = 1, deform_groups: int = 1) -> Tensor:
    """Deformable convolution (v1 when ``mask`` is None, modulated v2 otherwise).

    Args:
        x: ``[B, C, H, W]`` float input.
        offset: ``[B, G * 2 * kh * kw, Ho, Wo]`` sampling offsets in input pixels, interleaved
            ``(Δh, Δw)`` per kernel point (module docstring).
        weight: ``[C_out, C / groups, kh, kw]``.
        bias: ``[C_out]`` or None.
        mask: ``[B, G * kh * kw, Ho, Wo]`` modulation (already through the sigmoid) or None.
        stride, padding, dilation: as ``nn.Conv2d`` (int or (h, w)).
        groups: convolution groups (C and C_out divisible by it).
        deform_groups: G, offset groups (C divisible by it).

    Returns:
        ``[B, C_out, Ho, Wo]`` in ``x``'s dtype, ``Ho = (H + 2 pad_h - dil_h (kh - 1) - 1) // s_h + 1``.

    Raises:
        ValueError: shapes that do not fit together (names the tensor and both shapes).
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    if x.dim() != 4:
        raise ValueError(f"deform_conv2d: x must be [B, C, H, W], got {tuple(x.shape)}")
    b, c, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    k = kh * kw
    ho, wo = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"deform_conv2d: input {h}x{w} too small for kernel {kh}x{kw} (output {ho}x{wo})")
    if c % groups or c_out % groups or c_per_group != c // groups:
        raise ValueError(f"deform_conv2d: weight {tuple(weight.shape)} does not fit {c} input channels "
                         f"in {groups} groups")
    if c % deform_groups:
        raise ValueError(f"deform_conv2d: {c} channels not divisible by deform_groups={deform_groups}")
    g = deform_groups
    if tuple(offset.shape) != (b, g * 2 * k, ho, wo):
        raise ValueError(f"deform_conv2d: offset must be {(b, g * 2 * k, ho, wo)}, got {tuple(offset.shape)}")
    if mask is not None and tuple(mask.shape) != (b, g * k, ho, wo):
        raise ValueError(f"deform_conv2d: mask must be {(b, g * k, ho, wo)}, got {tuple(mask.shape)}")

    off = offset.view(b, g, k, 2, ho * wo).to(x.dtype)
    dev, dt = x.device, x.dtype
    # Regular grid of each kernel point: [K, L] with L = Ho * Wo.
    ki = torch.arange(kh, device=dev, dtype=dt).repeat_interleave(kw) * dh
    kj = torch.arange(kw, device=dev, dtype=dt).repeat(kh) * dw
    oh = (torch.arange(ho, device=dev, dtype=dt) * sh - ph).repeat_interleave(wo)
    ow = (torch.arange(wo, device=dev, dtype=dt) * sw - pw).repeat(ho)
    ys = ki[:, None] + oh[None, :] + off[:, :, :, 0]  # [B, G, K, L]
    xs = kj[:, None] + ow[None, :] + off[:, :, :, 1]
    y0, x0 = torch.floor(ys), torch.floor(xs)
    ly, lx = ys - y0, xs - x0
    y0, x0 = y0.long(), x0.long()
    cg = c // g
    flat = x.reshape(b, g, cg, h * w)
    cols = x.new_zeros(b, g, cg, k * ho * wo)
    for yi, xi, wt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                       (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
        idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).view(b, g, 1, k * ho * wo)
        vals = torch.gather(flat, 3, idx.expand(b, g, cg, k * ho * wo))
        cols = cols + vals * (wt * inside).view(b, g, 1, k * ho * wo)
    if mask is not None:
        cols = cols * mask.to(dt).reshape(b, g, 1, k * ho * wo)
    # [B, C, K, L] -> per convolution group [B, groups, C/groups * K, L]; weight [groups, Co/groups, C/groups * K].
    cols = cols.view(b, groups, c_per_group * k, ho * wo)
    wmat = weight.to(dt).reshape(groups, c_out // groups, c_per_group * k)
    out = torch.einsum("gok,bgkl->bgol", wmat, cols).reshape(b, c_out, ho, wo)
    if bias is not None:
        out = out + bias.to(dt).view(1, -1, 1, 1)
    return out


class DeformConv2dPack(nn.Module):
    """Deformable convolution v1 with its own offset branch (mmcv ``DeformConv2dPack``, ``"DCN"``).

    ``conv_offset`` is an ``nn.Conv2d(C, G * 2 * kh * kw, kernel_size, stride, padding,
    dilation, bias=True)`` initialised to zero (so the layer starts as a plain convolution);
    the main ``weight`` ``[C_out, C / groups, kh, kw]`` has no bias (mmcv's v1 refuses one).
    State-dict keys: ``weight``, ``conv_offset.{weight,bias}`` (mmdet's
    ``layer{s}.{b}.conv2.*``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as ``nn.Conv2d``.
        deform_groups: G, offset groups.
    """

    modulated = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__()
        if bias and not self.modulated:
            raise ValueError("DeformConv2dPack (DCN v1) has no bias, as mmcv's DeformConv2d")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        per_point = 3 if self.modulated else 2
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * per_point * self.kernel_size[0] * self.kernel_size[1],
                                     self.kernel_size, stride=self.stride, padding=self.padding,
                                     dilation=self.dilation, bias=True)
        # mmcv: weight ~ U(-1/sqrt(n), 1/sqrt(n)) with n = C_in * kh * kw; offsets start at zero.
        stdv = 1.0 / math.sqrt(in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -stdv, stdv)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offsets_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``conv_offset(x)`` split into offset ``[B, 2GK, Ho, Wo]`` and mask (v2: sigmoid) or None."""
        out = self.conv_offset(x)
        if not self.modulated:
            return out, None
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(mask)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C_out, Ho, Wo]`` (see :func:`deform_conv2d`)."""
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(x, offset, self.weight, self.bias, mask=mask, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, groups=self.groups,
                             deform_groups=self.deform_groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"deform_groups={self.deform_groups}, modulated={self.modulated}")


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """Modulated deformable convolution v2 (mmcv ``ModulatedDeformConv2dPack``, ``"DCNv2"``).

    ``conv_offset`` emits ``G * 3 * kh * kw`` channels ``[o1 | o2 | m]``: the offset is
    ``cat(o1, o2)`` (interleaved Δh, Δw per kernel point) and the modulation ``sigmoid(m)``
    (0.5 everywhere at the zero initialisation). ``bias`` is allowed (mmdet's ResNet passes
    ``bias=False``). Keys: ``weight``, ``[bias]``, ``conv_offset.{weight,bias}``.
    """

    modulated = True


#: mmcv registry names -> classes (mmdet ``dcn=dict(type=...)``).
DCN_TYPES: dict[str, type[DeformConv2dPack]] = {"DCN": DeformConv2dPack, "DCNv2": ModulatedDeformConv2dPack}


def build_dcn(kind: str, in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> DeformConv2dPack:
    """The deformable conv named by mmdet's ``dcn["type"]`` (``"DCN"`` v1 or ``"DCNv2"``).

    Raises:
        ValueError: another name.
    """
    if kind not in DCN_TYPES:
        raise ValueError(f"unknown deformable conv type {kind!r}; expected one of {tuple(DCN_TYPES)}")
    return DCN_TYPES[kind](in_channels, out_channels, kernel_size, **kwargs)
