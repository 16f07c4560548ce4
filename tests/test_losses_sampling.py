"""Gumbel top-k pixel sampler (spec §2, §7.8)."""

import numpy as np
import pytest
import torch

from kmax_deeplab.data.targets import pixel_mask_area
from kmax_deeplab.losses import gumbel_topk_sample, sampling_logits


def _image(h=8, w=8):
    """A 2x2 small mask, a large mask over most of the rest, and a void column."""
    small = torch.zeros(h, w, dtype=torch.bool)
    small[:2, :2] = True
    void = torch.zeros(h, w, dtype=torch.bool)
    void[:, -1] = True
    large = ~small & ~void
    area = pixel_mask_area(torch.stack([small, large]))
    inverse = (h * w) / area.clamp(min=1.0)
    return small, large, void, inverse


def test_never_picks_void_and_no_repeats():
    small, large, void, inverse = _image()
    logits = sampling_logits(inverse.flatten()[None].repeat(50, 1), void.flatten()[None].repeat(50, 1), 1.5)
    gen = torch.Generator().manual_seed(0)
    valid = int((~void).sum())
    idx = gumbel_topk_sample(logits, valid, gen)  # exactly as many as valid pixels
    assert idx.shape == (50, valid)
    for row in idx:
        assert len(set(row.tolist())) == valid
        assert not void.flatten()[row].any()


def test_k_larger_than_pixels_draws_everything_once():
    logits = torch.zeros(3, 10)
    idx = gumbel_topk_sample(logits, 25, torch.Generator().manual_seed(1))
    assert idx.shape == (3, 10)
    assert all(sorted(r.tolist()) == list(range(10)) for r in idx)


def test_small_areas_sampled_more_often():
    small, large, void, inverse = _image()
    reps = 2000
    logits = sampling_logits(inverse.flatten()[None].repeat(reps, 1), void.flatten()[None].repeat(reps, 1), 1.5)
    idx = gumbel_topk_sample(logits, 8, torch.Generator().manual_seed(2))
    counts = torch.bincount(idx.flatten(), minlength=64).float() / reps
    small_rate = counts[small.flatten()].mean().item()
    large_rate = counts[large.flatten()].mean().item()
    # single-draw probability ratio is (52/4)^1.5 ~ 47; top-8 saturates the small pixels.
    assert small_rate > 0.9
    assert large_rate < 0.1
    assert counts[void.flatten()].sum().item() == 0.0


def test_single_draw_matches_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    reps = 20000
    idx = gumbel_topk_sample(logits.repeat(reps, 1), 1, torch.Generator().manual_seed(3))
    freq = np.bincount(idx.flatten().numpy(), minlength=4) / reps
    expected = torch.softmax(logits[0], 0).numpy()
    # 4 standard errors at n = 20000
    assert np.all(np.abs(freq - expected) < 4 * np.sqrt(expected * (1 - expected) / reps))


def test_invalid_k():
    with pytest.raises(ValueError, match="k must be"):
        gumbel_topk_sample(torch.zeros(1, 4), 0)
