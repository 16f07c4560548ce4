"""SetCriterion: loss terms by name, a swappable matching step, weights checked (issue 10, item 4)."""

from __future__ import annotations

import pytest
import torch

from kmax_deeplab.losses import MATCHING_STEPS, MatchEachOutput, MatchOnce, SetCriterion


def _outputs():
    g = torch.Generator().manual_seed(0)
    out = lambda: {"pred_logits": torch.randn(2, 3, 4, generator=g),  # noqa: E731
                   "pred_masks": torch.randn(2, 3, 5, 5, generator=g)}
    return {**out(), "aux_outputs": [out(), out()], "extra": torch.tensor(2.0)}


def _criterion(matching, weights=None, calls=None):
    calls = [] if calls is None else calls

    def assign(output, targets):  # the "matching": here the mean mask logit of the output
        calls.append(output["pred_masks"])
        return output["pred_masks"].mean()

    terms = {"loss_a": lambda c, out, m, g: out["pred_logits"].abs().mean(),
             "loss_m": lambda c, out, m, g: m}
    final = {"loss_x": lambda c, outputs, m, g: outputs["extra"] * 1.0}
    return SetCriterion(terms, final, weights or {"loss_a": 1.0, "loss_m": 2.0, "loss_x": 0.5},
                        assign=assign, matching=matching), calls


def test_terms_are_looked_up_by_name_and_weighted():
    outputs = _outputs()
    crit, calls = _criterion(MatchOnce())
    losses = crit(outputs, [None, None])
    assert list(losses) == ["loss_a", "loss_m", "loss_x", "loss_a_aux0", "loss_m_aux0", "loss_a_aux1", "loss_m_aux1"]
    assert len(calls) == 1  # matched once, shared
    final_match = outputs["pred_masks"].mean()
    assert torch.equal(losses["loss_m_aux1"], 2.0 * final_match)
    assert torch.equal(losses["loss_x"], torch.tensor(1.0))
    assert torch.equal(losses["loss_a_aux0"], outputs["aux_outputs"][0]["pred_logits"].abs().mean())
    assert torch.equal(crit.get_loss("loss_a", outputs, None), outputs["pred_logits"].abs().mean())


def test_matching_step_is_swappable():
    outputs = _outputs()
    crit, calls = _criterion(MatchEachOutput())
    losses = crit(outputs, [None, None])
    assert len(calls) == 3  # final + each aux, re-matched
    assert torch.equal(losses["loss_m_aux1"], 2.0 * outputs["aux_outputs"][1]["pred_masks"].mean())
    assert set(MATCHING_STEPS) == {"once", "each_output"}


@pytest.mark.parametrize("weights, message", [
    ({"loss_a": 1.0, "loss_m": 1.0, "loss_x": 1.0, "loss_typo": 1.0}, r"unknown keys \['loss_typo'\]"),
    ({"loss_a": 1.0, "loss_x": 1.0}, r"without a weight \['loss_m'\]"),
    ({"loss_a": 1.0, "loss_m": -1.0, "loss_x": 1.0}, ">= 0"),
])
def test_weights_are_checked_at_construction(weights, message):
    with pytest.raises(ValueError, match=message):
        _criterion(MatchOnce(), weights)


def test_zero_weight_term_is_not_computed():
    crit, _ = _criterion(MatchOnce(), {"loss_a": 0.0, "loss_m": 1.0, "loss_x": 0.0})
    assert sorted(crit(_outputs(), [None, None])) == ["loss_m", "loss_m_aux0", "loss_m_aux1"]
