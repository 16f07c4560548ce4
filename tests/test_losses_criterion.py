"""KMaXCriterion: fp32 islands, gradients, weight checks, shared matching, config builder."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kmax_deeplab.config import get_preset
from kmax_deeplab.data.targets import prepare_targets
from kmax_deeplab.losses import TERMS, HungarianMatcher, KMaXCriterion, build_criterion, semantic_loss

C, N, D, B, H = 5, 6, 8, 2, 33  # canvas 33 -> h = 9
WEIGHTS = {"loss_cls": 3.0, "loss_dice": 3.0, "loss_mask_id": 0.3, "loss_insdis": 1.0, "loss_sem": 1.0}


def _targets(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(B):
        ids = rng.integers(0, 5, (H, H))
        segs = [1, 2, 3, 4]
        out.append({
            "masks": torch.from_numpy(np.stack([ids == s for s in segs])),
            "labels": torch.tensor([0, 2, 4, 1]),
            "is_crowd": torch.tensor([False, False, False, True]),
            "void": torch.from_numpy(ids == 0),
        })
    return prepare_targets(out, C)


def _output(gen, h=9):
    return {
        "pred_logits": torch.randn(B, N, C + 1, generator=gen),
        "pred_masks": torch.randn(B, N, h, h, generator=gen) * 2,
        "pixel_feature": F.normalize(torch.randn(B, D, h, h, generator=gen), dim=1),
    }


def _outputs(seed=0, num_aux=2):
    gen = torch.Generator().manual_seed(seed)
    out = _output(gen)
    out["aux_outputs"] = [_output(gen) for _ in range(num_aux)]
    out["semantic_logits"] = torch.randn(B, C + 1, 9, 9, generator=gen)
    return out


def _map(outputs, fn):
    res = {k: fn(v) for k, v in outputs.items() if k != "aux_outputs"}
    res["aux_outputs"] = [{k: fn(v) for k, v in a.items()} for a in outputs["aux_outputs"]]
    return res


def _criterion(**kw):
    return KMaXCriterion(C, HungarianMatcher(), WEIGHTS, insdis_sample_k=32, semantic_sample_k=32, **kw)


def test_keys_and_weighting():
    crit, targets, outputs = _criterion(), _targets(), _outputs()
    losses = crit(outputs, targets, generator=torch.Generator().manual_seed(0))
    expected = set(TERMS) | {f"{t}_aux{i}" for i in range(2) for t in TERMS if t != "loss_sem"}
    assert set(losses) == expected
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    unit = KMaXCriterion(C, HungarianMatcher(), {k: 1.0 for k in TERMS}, insdis_sample_k=32, semantic_sample_k=32)
    raw = unit(outputs, targets, generator=torch.Generator().manual_seed(0))
    for name, value in losses.items():
        assert value.item() == pytest.approx(raw[name].item() * WEIGHTS[name.split("_aux")[0]], rel=1e-6)


def test_autocast_bf16_equals_fp32():
    targets = _targets()
    bf16 = _map(_outputs(), lambda t: t.to(torch.bfloat16))
    ref = _criterion()(_map(bf16, lambda t: t.float()), targets, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _criterion()(bf16, targets, generator=torch.Generator().manual_seed(5))
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].dtype == torch.float32
        assert got[name].item() == pytest.approx(ref[name].item(), rel=1e-6, abs=1e-7), name


def test_gradients_reach_final_and_aux_outputs():
    outputs = _map(_outputs(), lambda t: t.clone().requires_grad_())
    losses = _criterion()(outputs, _targets(), generator=torch.Generator().manual_seed(0))
    sum(losses.values()).backward()
    for out in [outputs] + outputs["aux_outputs"]:
        for key in ("pred_logits", "pred_masks", "pixel_feature"):
            assert out[key].grad is not None and out[key].grad.abs().sum() > 0, key
    assert outputs["semantic_logits"].grad.abs().sum() > 0


@pytest.mark.parametrize("bad, message", [
    ({**WEIGHTS, "loss_focal": 1.0}, r"unknown keys \['loss_focal'\]"),
    ({k: v for k, v in WEIGHTS.items() if k != "loss_dice"}, r"without a weight \['loss_dice'\]"),
    ({**WEIGHTS, "loss_cls": -1.0}, "must be >= 0"),
])
def test_weight_dict_is_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        KMaXCriterion(C, HungarianMatcher(), bad)


def test_zero_weight_disables_term_and_missing_semantic_raises():
    crit = KMaXCriterion(C, HungarianMatcher(), {**WEIGHTS, "loss_insdis": 0.0}, semantic_sample_k=32)
    outputs = _outputs(num_aux=1)
    losses = crit(outputs, _targets())
    assert "loss_insdis" not in losses and "loss_insdis_aux0" not in losses
    del outputs["semantic_logits"]
    with pytest.raises(ValueError, match="semantic_logits"):
        crit(outputs, _targets())


def test_shared_versus_rematched_aux():
    outputs, targets = _outputs(num_aux=1), _targets()
    aux = outputs["aux_outputs"][0]
    shared = _criterion(share_final_matching=True)(outputs, targets, generator=torch.Generator().manual_seed(0))
    own = _criterion(share_final_matching=False)(outputs, targets, generator=torch.Generator().manual_seed(0))
    alone = _criterion()({**aux, "semantic_logits": outputs["semantic_logits"]}, targets,
                         generator=torch.Generator().manual_seed(0))
    # Re-matched aux terms equal the aux output evaluated as a final output; shared ones do not.
    assert own["loss_mask_id_aux0"].item() == pytest.approx(alone["loss_mask_id"].item(), rel=1e-6)
    assert own["loss_cls_aux0"].item() == pytest.approx(alone["loss_cls"].item(), rel=1e-6)
    assert shared["loss_mask_id_aux0"].item() != pytest.approx(alone["loss_mask_id"].item(), rel=1e-3)


def test_target_size_mismatch_raises():
    outputs = _outputs()
    with pytest.raises(ValueError, match="output stride"):
        _criterion()(outputs, prepare_targets([{
            "masks": torch.ones(1, 9, 9, dtype=torch.bool), "labels": torch.tensor([0]),
            "is_crowd": torch.tensor([False]), "void": torch.zeros(9, 9, dtype=torch.bool)}] * B, C))


def test_cityscapes_semantic_head_at_stride_32():
    # C channels at (h-1)/8+1: targets are strided-subsampled by 8 (BD), ignore index C.
    gen = torch.Generator().manual_seed(0)
    semantic = torch.randint(0, C + 1, (1, 17, 33), generator=gen)
    void = semantic == C
    logits = torch.randn(1, C, 3, 5, generator=gen)
    got = semantic_loss(logits, semantic, void, torch.ones(1, 17, 33), num_classes=C, sample_k=0)
    sub = semantic[0, ::8, ::8]
    ce = [-torch.log_softmax(logits[0, :, y, x], 0)[sub[y, x]].item()
          for y in range(3) for x in range(5) if sub[y, x] != C]
    assert got.item() == pytest.approx(sum(ce) / len(ce), rel=1e-5)
    with pytest.raises(ValueError, match="strided subsampling"):
        semantic_loss(torch.randn(1, C, 4, 5), semantic, void, torch.ones(1, 17, 33), num_classes=C, sample_k=0)


@pytest.mark.parametrize("preset", ["coco/kmax_r50", "cityscapes/kmax_r50", "synthetic/kmax_tiny"])
def test_build_criterion_from_presets(preset):
    cfg = get_preset(preset)
    crit = build_criterion(cfg.loss, cfg.model.num_classes)
    assert crit.weight_dict == {"loss_cls": cfg.loss.class_weight, "loss_dice": cfg.loss.dice_weight,
                                "loss_mask_id": cfg.loss.mask_id_weight,
                                "loss_insdis": cfg.loss.instance_discrimination_weight,
                                "loss_sem": cfg.loss.semantic_weight}
    assert crit.insdis_sample_k == cfg.loss.instance_sample_k
    assert crit.semantic_sample_k == cfg.loss.semantic_sample_k
    assert math.isclose(crit.insdis_sample_temperature, cfg.loss.instance_sample_temperature)
