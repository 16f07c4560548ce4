"""Helpers shared by the kMaX loss terms: fp32 islands, normalisers, Gumbel top-k sampling."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor

__all__ = [
    "SOFTMAX_MASKING_CONSTANT",
    "fp32_region",
    "mean_over_nonzero",
    "gumbel_topk_sample",
    "sampling_logits",
]

#: Added to the sampling logits of void pixels (deeplab2 / BD ``_SOFTMAX_MASKING_CONSTANT``).
SOFTMAX_MASKING_CONSTANT = -99999.0


@contextlib.contextmanager
def fp32_region(device: torch.device) -> Iterator[None]:
    """Disable autocast for ``device``'s type so the enclosed code runs in fp32 (spec §7.7).

    Callers still cast their float inputs with ``.float()``; this only stops autocast from
    lowering the matmuls/einsums inside.
    """
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield


def mean_over_nonzero(loss: Tensor) -> Tensor:
    """Per-image mean over the non-zero entries, then mean over the batch (BD normaliser).

    Args:
        loss: ``[B, L]`` float per-element losses, 0 where an element does not count.

    Returns:
        Scalar: ``mean_b( sum_l loss[b, l] / max(#{l: loss[b, l] != 0}, 1) )``; NaN/inf results
        become 0 (TF ``divide_no_nan``).
    """
    num_non_zero = (loss != 0).to(loss.dtype).sum(dim=-1).clamp(min=1.0)
    per_image = torch.nan_to_num(loss.sum(dim=-1) / num_non_zero, nan=0.0, posinf=0.0, neginf=0.0)
    return per_image.mean()


def sampling_logits(inverse_area: Tensor, void: Tensor, temperature: float) -> Tensor:
    """Gumbel sampling logits ``tau * log(h*w / area)``, with -99999 added on void pixels.

    Args:
        inverse_area: ``[B, L]`` float ``h*w / max(area of the pixel's GT mask, 1)``.
        void: ``[B, L]`` bool void pixels.
        temperature: tau_s (COCO 1.5 for L_insdis, 2.0 for L_sem; spec §2).

    Returns:
        ``[B, L]`` float32 logits.
    """
    logits = torch.log(inverse_area.float()) * temperature
    return logits + void.float() * SOFTMAX_MASKING_CONSTANT


def gumbel_topk_sample(logits: Tensor, k: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw ``k`` indices per row without replacement from ``softmax(logits)`` (Gumbel top-k).

    Adding i.i.d. Gumbel(0, 1) noise to the logits and taking the top k is equivalent to
    sampling k items without replacement with probabilities proportional to ``exp(logits)``
    (Kool et al., 2019; deeplab2 ``_gumbel_topk_sample``).

    Args:
        logits: ``[B, L]`` float sampling logits.
        k: number of samples; clipped to ``L`` (BD would fail for ``k > L``).
        generator: optional RNG on ``logits.device`` for reproducible draws.

    Returns:
        ``[B, min(k, L)]`` int64 indices into ``L``, distinct within each row.

    Raises:
        ValueError: if ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"gumbel_topk_sample: k must be >= 1, got {k}")
    k = min(k, logits.shape[-1])
    uniform = torch.rand(logits.shape, dtype=torch.float32, device=logits.device, generator=generator)
    # torch.rand is [0, 1); keep it strictly positive so that log stays finite.
    uniform = uniform.clamp(min=torch.finfo(torch.float32).tiny)
    gumbel = -torch.log(-torch.log(uniform))
    return torch.topk(logits.float() + gumbel, k, dim=-1).indices
