"""Helpers shared by the K-Net tests and ``tools/knet_parity.py``: seeded non-trivial weights.

The parity fixtures in ``tests/data/parity/knet/`` were produced by the original K-Net code
from the weights :func:`seeded_knet` builds (exported with
:func:`kmax_deeplab.checkpoints.mmdet.save_mmdet`), so the same seed must give the same
tensors here: only torch's CPU generator is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from kmax_deeplab.modeling.knet import KNet, build_knet

NORM_BIAS = 0.1
LINEAR_BIAS = 0.1
PARITY_DIR = Path(__file__).resolve().parent / "data" / "parity" / "knet"


@torch.no_grad()
def randomise_knet(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every 1-D parameter and every BN statistic distinct, in place.

    Biases ~ N(0, 0.5²) (so thing scores cross the 0.3 threshold and a dropped bias shows),
    norm weights ~ U(0.5, 1.5), BN running mean ~ N(0, 0.1²), running var ~ U(0.5, 1.5): a
    converter that swaps γ and β, drops a bias or mixes up channels changes the outputs.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(NORM_BIAS * torch.randn(m.bias.shape, generator=g))
    for name, p in model.named_parameters():
        if name.endswith("bias") and not _is_norm(model, name):
            p.copy_(LINEAR_BIAS * torch.randn(p.shape, generator=g))
    return model


def _is_norm(model: nn.Module, param_name: str) -> bool:
    owner = model.get_submodule(param_name.rsplit(".", 1)[0])
    return isinstance(owner, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))


def seeded_knet(task: str = "panoptic", seed: int = 0) -> KNet:
    """Full-size K-Net R-50 (``build_knet(task=task)``) with seeded, randomised weights, eval mode."""
    torch.manual_seed(seed)
    model = build_knet(task=task)
    randomise_knet(model, seed + 1)
    return model.eval()


#: target std (pixels) of each deformable conv's offsets on the calibration image
OFFSET_PIXELS = 1.0


def seeded_knet_dcn(task: str = "panoptic", seed: int = 0) -> KNet:
    """Full-size K-Net R-101-DCN (``dcn="DCN"`` in res3..res5) with seeded weights, eval mode.

    As :func:`seeded_knet`; then every deformable conv's offset branch gets weights ~ N(0, 1)
    and biases ~ N(0, 0.5²), and, in one forward pass over a fixed 128×192 gradient image,
    each branch's weight is scaled by the power of two that brings its offsets' std nearest to
    ``OFFSET_PIXELS`` (the randomised BNs make the res4 activations grow ~50× over its 23
    blocks, so one fixed std would push every sample outside the map; a power of two keeps the
    result exactly reproducible). The zero initialisation would make the layer a plain conv.
    """
    import math

    from kmax_deeplab.modeling.backbones.resnet import DeformConv2dNorm

    torch.manual_seed(seed)
    model = build_knet(task=task, backbone="resnet101", dcn="DCN")
    randomise_knet(model, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    layers = [m for m in model.modules() if isinstance(m, DeformConv2dNorm)]
    with torch.no_grad():
        for m in layers:
            m.conv_offset.weight.copy_(torch.randn(m.conv_offset.weight.shape, generator=g))
            m.conv_offset.bias.copy_(0.5 * torch.randn(m.conv_offset.bias.shape, generator=g))

    def calibrate(m, args):
        std = float(m.conv_offset(args[0]).std())
        m.conv_offset.weight.mul_(2.0 ** round(math.log2(OFFSET_PIXELS / std)))

    hooks = [m.register_forward_pre_hook(calibrate) for m in layers]
    ramp = torch.linspace(0, 255, 192)
    image = torch.stack([ramp.expand(128, 192), ramp.flip(0).expand(128, 192),
                         torch.linspace(0, 255, 128)[:, None].expand(128, 192)])[None]
    with torch.no_grad():
        model.eval()(image)
    for h in hooks:
        h.remove()
    return model.eval()


def subsample(x: np.ndarray, limit: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """``(flat indices, values)`` of at most ``limit`` evenly strided entries of ``x`` (float32)."""
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    step = max(1, -(-flat.size // limit))
    idx = np.arange(0, flat.size, step, dtype=np.int64)
    return idx, flat[idx]


def checksums(x: np.ndarray) -> np.ndarray:
    """``[sum, sum |x|, sum x²]`` in float64 over the whole tensor."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([x.sum(), np.abs(x).sum(), (x * x).sum()])


def postprocess_case(num_classes: int, num_kernels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Diverse last-stage outputs for the post-processing check.

    Class logits ~ N(0, 2²) ``[N, C]``; stride-4 mask logits ``[N, 16, 24]``: a random 4×6
    partition of the image among 8 kernels (the first 4 and last 4 rows for panoptic: things
    and stuff), +4 inside / −4 outside plus N(0, 1) noise, upsampled bilinearly; the other
    kernels get noise − 4, so that some pass the overlap test and some do not.
    """
    g = torch.Generator().manual_seed(seed)
    cls = 2.0 * torch.randn(num_kernels, num_classes, generator=g)
    active = torch.tensor([0, 1, 2, 3, num_kernels - 4, num_kernels - 3, num_kernels - 2, num_kernels - 1])
    owner = active[torch.randint(0, len(active), (4, 6), generator=g)]
    low = torch.randn(num_kernels, 4, 6, generator=g) - 4.0
    low += 8.0 * (owner[None] == torch.arange(num_kernels)[:, None, None]).float()
    masks = torch.nn.functional.interpolate(low[None], size=(16, 24), mode="bilinear", align_corners=False)[0]
    return cls.numpy(), masks.numpy()
