"""Conv + norm building blocks of the ResNet backbones (detectron2 key layout).

* :class:`Conv2dNorm` is an ``nn.Conv2d`` with a ``norm`` child, so its state-dict keys are
  ``<name>.weight`` and ``<name>.norm.{weight,bias,running_mean,running_var,
  num_batches_tracked}``: detectron2's ``layers.Conv2d(norm=...)`` layout that the bytedance
  (BD) checkpoints use (spec §5.1, "R50").
* :class:`FrozenBatchNorm2d` is a batch norm with fixed statistics and affine parameters; in
  eval mode it computes the same function as ``nn.BatchNorm2d``.
* :func:`resnet_norm` resolves the ``norm`` string once for every ResNet layer.

Batch-norm constants (eps 1e-3, momentum 0.01): BD's ResNet
(``kmax_deeplab/modeling/backbone/resnet.py``) does not use detectron2's ``get_norm`` (which
would give eps 1e-5, momentum 0.1); it imports ``get_norm`` from
``kmax_deeplab/modeling/pixel_decoder/kmax_pixel_decoder.py``, where ``"syncbn"`` builds
``nn.SyncBatchNorm(C, eps=1e-3, momentum=0.01)``. deeplab2's defaults are the same
(``trainer.proto``: ``batchnorm_epsilon`` 0.001, ``batchnorm_momentum`` 0.99 in Keras terms).
See spec §4 "Norm layers" and §7.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.layers.norm import BN_EPS, BN_MOMENTUM, get_norm

RESNET_NORMS: tuple[str, ...] = ("BN", "SyncBN", "FrozenBN", "none")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with frozen statistics and affine parameters (all buffers, no parameters).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel, which is
    ``nn.BatchNorm2d`` in eval mode. The buffers use the ``BatchNorm2d`` names, including an
    unused ``num_batches_tracked``, so a checkpoint loads into either class with the same keys.

    Args:
        num_features: D, channels.
        eps: added to the variance (kMaX: 1e-3).
    """

    def __init__(self, num_features: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``[B, D, H, W]`` with the frozen statistics; same shape and dtype."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        # [D] -> [1, D, 1, 1] to broadcast over batch and space.
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Like BatchNorm2d, accept checkpoints without the step counter (TF-converted ones).
        state_dict.setdefault(prefix + "num_batches_tracked",
                              torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @classmethod
    def from_batch_norm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
        """A frozen copy of a (Sync)BatchNorm's current affine parameters and statistics."""
        frozen = cls(bn.num_features, eps=bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
                frozen.num_batches_tracked.copy_(bn.num_batches_tracked)
        return frozen

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def resnet_norm(norm: str, num_features: int, *, eps: float = BN_EPS,
                momentum: float = BN_MOMENTUM) -> nn.Module:
    """The norm layer after a ResNet conv.

    Args:
        norm: ``"BN"`` (``BatchNorm2d``), ``"SyncBN"`` (``SyncBatchNorm``), ``"FrozenBN"``
            (:class:`FrozenBatchNorm2d`) or ``"none"`` (identity; no state-dict keys).
        num_features: D, channels.
        eps, momentum: batch-norm constants; kMaX uses eps 1e-3, momentum 0.01 (the
            defaults), mmdet/torchvision (K-Net) eps 1e-5, momentum 0.1.

    Raises:
        ValueError: unknown ``norm``.
    """
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(num_features, eps=eps)
    if norm not in RESNET_NORMS:
        raise ValueError(f"unknown ResNet norm {norm!r}; expected one of {RESNET_NORMS}")
    if (eps, momentum) == (BN_EPS, BN_MOMENTUM):
        return get_norm(norm, num_features, dim=2)
    if norm == "BN":
        return nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(num_features, eps=eps, momentum=momentum)
    return nn.Identity()


class Conv2dNorm(nn.Conv2d):
    """A bias-free ``nn.Conv2d`` followed by its ``norm`` child (no activation).

    Keys: ``weight`` ``[D_out, D_in, k, k]`` and ``norm.*``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size k.
        stride: convolution stride.
        padding: symmetric zero padding; ``k // 2`` keeps the 32k+1 geometry (spec §1).
        norm: see :func:`resnet_norm`.
        bn_eps, bn_momentum: batch-norm constants (see :func:`resnet_norm`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 stride: int = 1, padding: int = 0, norm: str = "BN", bn_eps: float = BN_EPS,
                 bn_momentum: float = BN_MOMENTUM) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, bias=False)
        self.norm = resnet_norm(norm, out_channels, eps=bn_eps, momentum=bn_momentum)
        # detectron2's c2_msra_fill: He normal, fan_out, ReLU gain.
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D_in, H, W]`` -> ``[B, D_out, H', W']`` (convolution, then norm)."""
        return self.norm(F.conv2d(x, self.weight, None, self.stride, self.padding,
                                  self.dilation, self.groups))


def freeze_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d``/``SyncBatchNorm`` in ``module`` by a frozen copy, in place.

    Returns:
        ``module`` itself (or the frozen copy when ``module`` is itself a batch norm).
    """
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return FrozenBatchNorm2d.from_batch_norm(module)
    for name, child in module.named_children():
        new = freeze_batch_norms(child)
        if new is not child:
            setattr(module, name, new)
    return module


__all__ = ["RESNET_NORMS", "Conv2dNorm", "FrozenBatchNorm2d", "freeze_batch_norms",
           "resnet_norm"]
