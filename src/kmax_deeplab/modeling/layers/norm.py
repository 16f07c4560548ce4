"""Normalisation layers with the reference constants (spec §1, §7.1, §7.7).

* Batch norm everywhere in kMaX: eps 1e-3, momentum 0.01 (PyTorch convention; TF 0.99),
  convertible to :class:`torch.nn.SyncBatchNorm` (``norm="SyncBN"`` or
  ``nn.SyncBatchNorm.convert_sync_batchnorm``).
* Layer norm (ConvNeXt, the pixel decoder's input norms): eps 1e-6, always computed in
  fp32 even under autocast (an fp32 island), the result cast back to the input dtype.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
LN_EPS = 1e-6


def get_norm(norm: str, num_features: int, *, dim: int = 2) -> nn.Module:
    """Build a batch-norm layer with kMaX's eps and momentum.

    Args:
        norm: ``"BN"`` (``BatchNorm1d``/``BatchNorm2d`` by ``dim``), ``"SyncBN"``
            (:class:`nn.SyncBatchNorm`, any input rank) or ``"none"`` (identity).
        num_features: channels.
        dim: 1 for ``[B, D, N]`` inputs (1-D convs over queries), 2 for ``[B, D, H, W]``.

    Raises:
        ValueError: unknown ``norm`` or ``dim``.
    """
    if norm == "BN":
        if dim == 1:
            return nn.BatchNorm1d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)
        if dim == 2:
            return nn.BatchNorm2d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)
        if dim == 3:
            return nn.BatchNorm3d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)
        raise ValueError(f"unsupported batch-norm dim {dim}")
    if norm == "SyncBN":
        return nn.SyncBatchNorm(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)
    if norm in ("none", "", None):
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected 'BN', 'SyncBN' or 'none'")


def frozen_affine(norm: nn.Module, channels: int, like: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """(scale, shift) ``[channels]`` fp32 of a norm that acts as a fixed affine map, else None.

    Used by the eval-mode fast paths (axial attention, predictor) to fold a BN into a
    neighbouring product; ``like`` gives the device.

    A batch norm in eval mode with running statistics is y = x·scale + shift; the identity
    (``norm="none"``) is scale 1, shift 0. A batch norm in training mode (batch statistics,
    running-stat updates) returns None and must be called as a module.
    """
    if isinstance(norm, nn.Identity):
        ones = torch.ones(channels, dtype=torch.float32, device=like.device)
        return ones, torch.zeros_like(ones)
    if (isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training
            and norm.running_mean is not None and norm.running_var is not None):
        scale = norm.running_var.float().add(norm.eps).rsqrt()
        if norm.weight is not None:
            scale = scale * norm.weight.float()
        shift = -norm.running_mean.float() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.float()
        return scale, shift
    return None


class LayerNormFP32(nn.LayerNorm):
    """Channels-last layer norm over the last dim, computed in fp32 (eps 1e-6 default).

    Input ``[..., D]`` of any float dtype; output has the input's dtype.
    """

    def __init__(self, normalized_shape: int, eps: float = LN_EPS) -> None:
        super().__init__(normalized_shape, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                             self.bias.float(), self.eps)
        return y.to(x.dtype)


class LayerNorm2d(nn.Module):
    """Channels-first layer norm: normalises ``[B, D, H, W]`` over D at each pixel, in fp32.

    Parameters are ``weight`` and ``bias`` of shape ``[D]`` (the ConvNeXt / bytedance
    ``LayerNorm(data_format="channels_first")`` layout). Output has the input's dtype.
    """

    def __init__(self, num_channels: int, eps: float = LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            mean = xf.mean(1, keepdim=True)
            var = (xf - mean).pow(2).mean(1, keepdim=True)
            y = (xf - mean) / torch.sqrt(var + self.eps)
            y = self.weight.float()[:, None, None] * y + self.bias.float()[:, None, None]
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
