"""ConvNeXt backbones (Liu et al. 2022, "A ConvNet for the 2020s"; spec §1.1, §5.1).

The official FB design as used by bytedance/kmax-deeplab
(``kmax_deeplab/modeling/backbone/convnext.py``) and deeplab2 (``model/pixel_encoder/convnext.py``
with ``zero_padding_for_downstream=True``):

* stem ``downsample_layers.0``: 4×4/4 conv (with bias) + channels-first LayerNorm;
* ``downsample_layers.{1,2,3}``: channels-first LayerNorm + 2×2/2 conv;
* ``stages.{i}.{j}``: 7×7 depthwise conv, channels-last LayerNorm, Linear(4D), GELU,
  Linear(D), layer scale ``gamma`` (init 1e-6), drop path; residual sum, no activation;
* every LayerNorm has eps 1e-6 and runs in fp32; drop-path rates rise linearly from 0 to
  ``drop_path`` over all blocks; no final norm, no head.

**Zero padding for the 32k+1 geometry** (both references, unconditionally, at every input size):
pad (top/left 1, bottom/right 2) before the stem and (top/left 0, bottom/right 1) before every
downsample. So 1281 -> 1284 -> 321, then 161, 81, 41; any H gives ceil(H / stride).

Weights use the FB truncated-normal init (std 0.02, zero biases); BD keeps PyTorch's default
init because it always loads ImageNet weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.backbones.base import Backbone, FeatureSpec, check_feature_info
from kmax_deeplab.modeling.layers.drop_path import DropPath
from kmax_deeplab.modeling.layers.norm import LN_EPS, LayerNorm2d, LayerNormFP32

# (left, right, top, bottom) zero padding for F.pad on [B, D, H, W].
STEM_PADDING = (1, 2, 1, 2)
DOWNSAMPLE_PADDING = (0, 1, 0, 1)

CONVNEXT_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    # name: (depths, dims)
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block: ``x + drop_path(gamma * pwconv2(gelu(pwconv1(norm(dwconv(x))))))``.

    Args:
        dim: D, channels.
        drop_path: stochastic-depth probability of the residual branch.
        layer_scale_init: initial value of every entry of ``gamma`` ``[D]`` (> 0).

    Raises:
        ValueError: ``layer_scale_init`` is not positive (the BD keys always hold ``gamma``).
    """

    def __init__(self, dim: int, *, drop_path: float = 0.0,
                 layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        if layer_scale_init <= 0:
            raise ValueError(f"layer_scale_init must be > 0, got {layer_scale_init}")
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNormFP32(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D, H, W]`` -> ``[B, D, H, W]``."""
        y = self.dwconv(x)
        # [B, D, H, W] -> [B, H, W, D] for the channels-last norm and the Linear layers.
        y = y.permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = self.gamma * y
        # [B, H, W, D] -> [B, D, H, W]
        y = y.permute(0, 3, 1, 2)
        return x + self.drop_path(y)


class ConvNeXt(Backbone):
    """ConvNeXt trunk with outputs stem, res2..res5 at strides 4, 4, 8, 16, 32.

    Args:
        depths: blocks per stage, e.g. ``(3, 3, 9, 3)`` (T).
        dims: channels per stage, e.g. ``(96, 192, 384, 768)`` (T).
        drop_path: largest stochastic-depth rate; block k of K gets ``drop_path * k / (K - 1)``.
        layer_scale_init: initial ``gamma`` (1e-6).
        in_channels: input channels (3).

    Raises:
        ValueError: not 4 stages, or ``drop_path`` outside [0, 1).
    """

    def __init__(self, depths: Sequence[int], dims: Sequence[int], *, drop_path: float = 0.0,
                 layer_scale_init: float = 1e-6, in_channels: int = 3) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXt needs 4 stages, got depths {tuple(depths)}, "
                             f"dims {tuple(dims)}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4),
            LayerNorm2d(dims[0], eps=LN_EPS))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(dims[i], eps=LN_EPS),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))

        # float32 linspace on the CPU, as BD computes it (also under a meta default device).
        rates = torch.linspace(0, drop_path, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        start = 0
        for depth, dim in zip(depths, dims):
            self.stages.append(nn.Sequential(*[
                ConvNeXtBlock(dim, drop_path=rates[start + j], layer_scale_init=layer_scale_init)
                for j in range(depth)]))
            start += depth
        self.drop_path_rates = tuple(rates)
        self.apply(_init_weights)

        self.feature_info = check_feature_info(
            [FeatureSpec("stem", dims[0], 4)]
            + [FeatureSpec(f"res{i + 2}", dims[i], 4 * 2 ** i) for i in range(4)])

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features of a normalised image batch.

        Args:
            x: ``[B, 3, H, W]`` float, already normalised.

        Returns:
            ``"stem"`` (output of ``downsample_layers.0``) and ``"res2".."res5"`` (raw stage
            outputs), each ``[B, D, ceil(H/s), ceil(W/s)]`` as in ``feature_info``.

        Raises:
            ValueError: ``x`` is not ``[B, 3, H, W]`` floating point.
        """
        self._check_input(x)
        out = {}
        for i in range(4):
            x = F.pad(x, STEM_PADDING if i == 0 else DOWNSAMPLE_PADDING)
            x = self.downsample_layers[i](x)
            if i == 0:
                out["stem"] = x
            x = self.stages[i](x)
            out[f"res{i + 2}"] = x
        return out


def _init_weights(module: nn.Module) -> None:
    """FB ConvNeXt init: truncated normal (std 0.02) for conv/linear weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def convnext(size: str, *, drop_path: float = 0.0) -> ConvNeXt:
    """ConvNeXt-T/S/B/L by ``size`` in ``"tiny"``, ``"small"``, ``"base"``, ``"large"``.

    Raises:
        ValueError: unknown size.
    """
    if size not in CONVNEXT_SIZES:
        raise ValueError(f"unknown ConvNeXt size {size!r}; expected one of "
                         f"{tuple(CONVNEXT_SIZES)}")
    depths, dims = CONVNEXT_SIZES[size]
    return ConvNeXt(depths, dims, drop_path=drop_path)


__all__ = ["CONVNEXT_SIZES", "ConvNeXt", "ConvNeXtBlock", "convnext"]
