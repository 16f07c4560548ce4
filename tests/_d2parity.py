"""Shared by ``tests/test_parity_deeplab2.py`` and ``tools/make_deeplab2_parity.py``.

Everything needed to rebuild, without TensorFlow, the exact model and input that the
fixtures in ``tests/data/parity/deeplab2/`` were computed with by deeplab2's own kMaX:

* :func:`seeded_model`: our model (``reference="deeplab2"``) with weights from a seed, made
  non-trivial as ``running_references.md`` asks: every BN / LayerNorm gets random γ (away
  from 0, random sign) and β, every bias and ConvNeXt layer scale a random value (so the
  zero-initialised residual γ cannot hide a wrong branch), then the BN statistics are
  calibrated by one training-mode pass in float64 (momentum 1: running stats = batch stats
  of the seeded test image and one other), which keeps activations at unit scale through ~100 residual blocks
  and makes the float32 weights independent of thread counts;
* :func:`seeded_image`: a smooth random RGB image with integer values 0..255;
* :func:`summaries`: what is stored per stage: a seeded Gaussian projection over channels
  (``[K, H, W]``), the full channel vectors at a few fixed pixels, and the argmax over
  channels (mask logits: over queries, i.e. the k-means assignment / panoptic owner).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

#: reference commit of google-research/deeplab2 the fixtures were produced with.
DEEPLAB2_COMMIT = "64bc1c1"
CANVAS = 129
SEED = 20261201
PROJECTION_SEED = 7
PROJECTION_DIM = 4
#: maps with more positions than this get a 2-dimensional projection (fixture size).
SMALL_MAP = 300
#: (row, col) fractions of the map at which full channel vectors are stored.
PIXELS = ((0.5, 0.25), (0.75, 1.0))
BACKBONES = {
    # fixture name -> (our preset, deeplab2 config textproto under configs/coco/kmax_deeplab/)
    "r50": ("coco/kmax_r50_deeplab2", "kmax_meta_r50_os32.textproto"),
    "convnext_tiny": ("coco/kmax_convnext_tiny_deeplab2", "kmax_meta_convnext_tiny_os32.textproto"),
}
#: the class head's weights are scaled by this so that some queries pass the 0.7 / 0.5
#: class thresholds and the panoptic result is not empty.
CLASS_HEAD_GAIN = 3.0
#: γ of the final predictor's 1-channel mask BN (a temperature), for the same reason.
MASK_GAIN = 4.0
#: |γ| ranges of residual-branch BNs (zero-initialised in the model) and attention-logit BNs.
RESIDUAL_GAMMA = (0.1, 0.3)
SIMILARITY_GAMMA = (0.25, 0.75)
BN_GAMMA = (0.5, 1.0)
QUERY_GAMMA = (0.3, 0.6)
QUERY_SIMILARITY_GAMMA = (0.05, 0.15)


def parity_config(name: str):
    """The preset of fixture ``name`` at the ``CANVAS`` x ``CANVAS`` canvas."""
    from kmax_deeplab.config import get_preset

    cfg = get_preset(BACKBONES[name][0])
    cfg.model.image_size = (CANVAS, CANVAS)
    # Stochastic depth only acts in training; off so that the calibration pass is deterministic.
    cfg.model.drop_path = 0.0
    cfg.model.backbone_drop_path = 0.0
    return cfg


def seeded_image(seed: int, size: int = CANVAS, batch: int = 1) -> torch.Tensor:
    """``[batch, 3, size, size]`` float32 RGB, integers 0..255: smooth blobs plus noise."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((batch, 3, 6, 6)))
    smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    noise = torch.from_numpy(rng.random((batch, 3, size, size)))
    img = torch.floor(255.0 * (0.8 * smooth + 0.2 * noise) + 0.5).clamp(0, 255)
    return img.float()


def _signed_uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    mag = low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return mag * sign


@torch.no_grad()
def seeded_model(name: str, seed: int = SEED) -> nn.Module:
    """Our model of fixture ``name`` with the seeded, calibrated weights (eval mode, fp32)."""
    from kmax_deeplab.modeling.kmax import build_kmax

    cfg = parity_config(name)
    torch.manual_seed(seed)
    model = build_kmax(cfg.model).double()
    g = torch.Generator().manual_seed(seed + 1)
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            # Residual-branch BNs (γ initialised to 0) and attention-logit BNs get smaller γ:
            # keeps float32 rounding from growing through the ~20 attention blocks.
            if not m.weight.any():
                low, high = RESIDUAL_GAMMA
            elif mod_name.endswith("_query_self_attention._batch_norm_similarity"):
                low, high = QUERY_SIMILARITY_GAMMA
            elif mod_name.endswith("_batch_norm_similarity"):
                low, high = SIMILARITY_GAMMA
            elif "_kmax_transformer_layers." in mod_name and "._predictor." not in mod_name:
                low, high = QUERY_GAMMA
            else:
                low, high = BN_GAMMA
            m.weight.copy_(_signed_uniform(g, c, low, high))
            m.bias.copy_(0.3 * torch.randn(c, generator=g, dtype=torch.float64))
            m.momentum = 1.0
        elif isinstance(m, nn.LayerNorm) or type(m).__name__ == "LayerNorm2d":
            c = m.weight.numel()
            m.weight.copy_(_signed_uniform(g, c, 0.5, 1.5))
            m.bias.copy_(0.3 * torch.randn(c, generator=g, dtype=torch.float64))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    for p_name, p in model.named_parameters():
        if p_name.endswith(".gamma"):  # ConvNeXt layer scale (init 1e-6)
            p.copy_(_signed_uniform(g, p.numel(), 0.5, 1.5).view_as(p))
    # The final mask "temperature" BN: peaky mask probabilities, so that binary masks pass 0.4.
    model.predictor._predictor._pixel_space_mask_batch_norm.weight.fill_(MASK_GAIN)
    heads = [m for n, m in model.named_modules() if n.endswith("_transformer_class_head")]
    for head in heads:
        conv = head.conv if hasattr(head, "conv") else head
        conv.weight.mul_(CLASS_HEAD_GAIN)
    # Some steps run in float32 on purpose (k-means sum, softmaxes, LayerNorm): cast what
    # they hand to a float64 module back to float64.
    def to_double(module, args):
        return tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    hooks = [m.register_forward_pre_hook(to_double) for m in model.modules()
             if any(True for _ in m.parameters(recurse=False))]
    # Calibration batch: the test image (seed + 3) and another one, so that the eval-mode
    # statistics fit the test input (the k-means query path is sensitive to mismatched ones).
    size = cfg.model.image_size[0]
    batch = torch.cat([seeded_image(seed + 3, size), seeded_image(seed + 2, size)])
    model.train()
    model(batch.double())
    for h in hooks:
        h.remove()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.01
    return model.float().eval()


def projection(channels: int, seed: int = PROJECTION_SEED, k: int = PROJECTION_DIM) -> np.ndarray:
    """``[k, channels]`` float64 Gaussian projection, scaled by 1/sqrt(channels)."""
    rng = np.random.default_rng([seed, channels])
    return rng.standard_normal((k, channels)) / math.sqrt(channels)


def pixel_positions(h: int, w: int) -> list[tuple[int, int]]:
    return [(int(round(fy * (h - 1))), int(round(fx * (w - 1)))) for fy, fx in PIXELS]


def summaries(x: np.ndarray, *, argmax: bool = False, proj_dim: int | None = None) -> dict[str, np.ndarray]:
    """Stored summary of one ``[C, H, W]`` map or ``[N, C]`` matrix (float32 arrays).

    ``proj``: ``P @ x`` over the channel axis (``[4, H, W]``, ``[2, H, W]`` for maps larger
    than :data:`SMALL_MAP`, ``proj_dim`` when given); ``pixels``: ``x[:, y, x]`` at
    :data:`PIXELS` (``[C, len(PIXELS)]``) or, for a matrix, the first 2 rows; ``scale``:
    max |x|; ``argmax`` and ``margin`` (optional): argmax over channels ``[H, W]`` uint8 and
    the top-1 minus top-2 value there (float16), so that a test can tell a near-tie
    (a pixel whose owner float rounding may flip) from a real disagreement.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        c, h, w = x.shape
        k = proj_dim or (PROJECTION_DIM if h * w <= SMALL_MAP else 2)
        out = {"proj": np.einsum("kc,chw->khw", projection(c, k=k), x).astype(np.float32),
               "pixels": np.stack([x[:, i, j] for i, j in pixel_positions(h, w)], 1).astype(np.float32),
               "scale": np.float32(np.abs(x).max())}
        if argmax:
            top2 = np.sort(x, axis=0)[-2:]
            out["argmax"] = x.argmax(0).astype(np.uint8)
            out["margin"] = (top2[1] - top2[0]).astype(np.float16)  # top-1 minus top-2
        return out
    if x.ndim == 2:  # [N, C] class logits: project over classes, keep 2 full rows
        n, c = x.shape
        return {"proj": (x @ projection(c).T).astype(np.float32), "pixels": x[:2].astype(np.float32),
                "scale": np.float32(np.abs(x).max())}
    raise ValueError(f"summaries: expected [C, H, W] or [N, C], got shape {x.shape}")


def rel_error(ours: np.ndarray, ref: np.ndarray, scale: float | None = None) -> float:
    """max |ours - ref| / ``scale`` (default max |ref|)."""
    ref = np.asarray(ref, np.float64)
    scale = float(np.abs(ref).max()) if scale is None else scale
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / max(scale, 1e-30))
