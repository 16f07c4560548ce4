"""The full kMaX-DeepLab model with the real backbones (spec §1 table, §5.1)."""

from __future__ import annotations

import pytest
import torch

from kmax_deeplab.config import get_preset
from kmax_deeplab.modeling.kmax import build_kmax


def _meta_model(preset: str):
    with torch.device("meta"):  # shapes only: skips the slow random init
        return build_kmax(get_preset(preset).model)


def _bd_layout(path) -> dict[str, list[int]]:
    out = {}
    for line in path.read_text().splitlines():
        key, shape, _ = line.split("\t")
        key = key.replace("sem_seg_head.", "").replace("_predcitor", "_predictor")
        out[key] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    return out


@pytest.mark.parametrize("preset,tsv,count", [
    ("coco/kmax_r50", "bytedance_kmax_r50_coco.keys.tsv", 1417),
    ("coco/kmax_convnext_tiny", "bytedance_kmax_convnext_tiny_coco.keys.tsv", None),
])
def test_full_state_dict_equals_bytedance_layout(checkpoint_layouts, preset, tsv, count):
    ref = _bd_layout(checkpoint_layouts / tsv)
    mine = {k: list(v.shape) for k, v in _meta_model(preset).state_dict().items()}
    assert sorted(set(ref) ^ set(mine)) == []
    assert {k: v for k, v in mine.items() if ref[k] != v} == {}
    if count is not None:
        assert len(mine) == count
        assert sum(k.endswith("num_batches_tracked") for k in mine) == 233


@pytest.mark.parametrize("preset,inference,with_aux", [
    ("coco/kmax_r50", 56.6, 72.4),
    ("coco/kmax_convnext_tiny", 60.9, 67.3),
    ("coco/kmax_convnext_small", 82.6, 88.9),
    ("coco/kmax_convnext_base", 121.5, 129.8),
    ("coco/kmax_convnext_large", 231.8, 243.9),
    ("cityscapes/kmax_r50", 56.4, None),
])
def test_parameter_counts_match_spec_table(preset, inference, with_aux):
    model = _meta_model(preset)
    total = sum(p.numel() for p in model.parameters()) / 1e6
    aux = sum(p.numel() for n, p in model.named_parameters() if "_auxiliary_semantic_predictor" in n) / 1e6
    assert abs(total - aux - inference) < 0.1
    if with_aux is not None:
        assert abs(total - with_aux) < 0.1


@pytest.mark.slow  # ~1-3 s warm, >10 s on a loaded 2-core VM (first model forward)
def test_tiny_preset_forward_backward_with_real_backbone():
    cfg = get_preset("synthetic/kmax_tiny").model
    torch.manual_seed(0)
    model = build_kmax(cfg).train()
    out = model(torch.rand(2, 3, 129, 129) * 255)
    n, c, d = cfg.num_queries, cfg.num_classes, cfg.pixel_feature_dim
    assert out["pred_logits"].shape == (2, n, c + 1)
    assert out["pred_masks"].shape == (2, n, 33, 33)
    assert out["pixel_feature"].shape == (2, d, 33, 33)
    assert out["semantic_logits"].shape == (2, c + 1, 33, 33)
    assert len(out["aux_outputs"]) == 3
    tensors = [out["pred_logits"], out["pred_masks"], out["pixel_feature"], out["semantic_logits"]]
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, n, c + 1)
        assert aux["pred_masks"].shape == (2, n, 33, 33)
        assert aux["pixel_feature"].shape == (2, d, 33, 33)
        tensors += list(aux.values())
    assert all(torch.isfinite(t).all() for t in tensors)
    sum(t.sum() for t in tensors).backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


@pytest.mark.slow
def test_r50_coco_output_shapes_at_1281():
    torch.manual_seed(0)
    model = build_kmax(get_preset("coco/kmax_r50").model).eval()
    with torch.no_grad():
        out = model(torch.full((1, 3, 1281, 1281), 127.5))
    assert out["pred_logits"].shape == (1, 128, 134)
    assert out["pred_masks"].shape == (1, 128, 321, 321)
    assert out["pixel_feature"].shape == (1, 128, 321, 321)
    assert len(out["aux_outputs"]) == 6
    for aux in out["aux_outputs"]:
        assert aux["pred_masks"].shape == (1, 128, 321, 321)
        assert aux["pixel_feature"].shape == (1, 128, 321, 321)
    assert "semantic_logits" not in out
    assert torch.isfinite(out["pred_masks"]).all()


@pytest.mark.slow  # ~1-3 s warm, >10 s on a loaded 2-core VM (first model forward)
def test_tiny_cityscapes_variant_stem_stage_and_head_only_semantic_logits():
    cfg = get_preset("synthetic/kmax_tiny").model
    cfg.use_stem_skip, cfg.aux_semantic = True, "head"
    torch.manual_seed(0)
    model = build_kmax(cfg).train()
    assert len(model.pixel_decoder._stages) == 5
    out = model(torch.rand(2, 3, 129, 129) * 255)
    # BD stem skip is stride 4 (post max-pool), so masks stay at 33x33; the head sees res5 (5x5).
    assert out["pred_masks"].shape == (2, cfg.num_queries, 33, 33)
    assert out["semantic_logits"].shape == (2, cfg.num_classes, 5, 5)
