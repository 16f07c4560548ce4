"""Helpers shared by the kMaX model tests."""

from __future__ import annotations

import torch
from torch import nn


def randomise_batch_norms(module: nn.Module, seed: int = 0) -> None:
    """Give every BN distinct running stats and affine params (non-zero γ), so that channel
    order matters and zero-initialised residual branches cannot hide an error."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g))
