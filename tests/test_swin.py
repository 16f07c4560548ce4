"""Swin Transformer backbone: parity with mmdet 2.28.2's SwinTransformer, the official-layout
converter, the ImageNet importer and parameter counts (fixture: tests/data/parity/swin/, made by
tools/make_swin_parity.py from the reference code; weights regenerated here from the seed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kmax_deeplab.checkpoints.imagenet import convert_imagenet, load_imagenet_backbone
from kmax_deeplab.checkpoints.swin import (
    official_to_ours,
    ours_to_official,
    relative_position_index_entries,
)
from kmax_deeplab.checkpoints.table import CheckpointMismatchError
from kmax_deeplab.modeling.backbones import swin as swin_mod
from kmax_deeplab.modeling.backbones.swin import relative_position_index, shifted_window_mask, swin
from swin_test_utils import PARITY_DIR, official_classifier_checkpoint, parity_image, seeded_swin, summarise

META = json.loads((PARITY_DIR / "meta.json").read_text())
COUNTS = META["parameter_counts"]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_equal_mmdet():
    """Swin-T / Swin-L parameter counts equal mmdet's SwinTransformer built on CPU (meta.json)."""
    with torch.device("meta"):
        assert _count(swin("tiny")) == COUNTS["mmdet_swin_tiny"] == 27_520_698
        assert _count(swin("large")) == COUNTS["mmdet_swin_large"] == 194_998_164


def test_relative_position_index_and_mask_by_hand():
    """The index of the official formula on a 2x2 window, and the 3x3-region shift mask of a 4x4 map."""
    assert relative_position_index(2).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    m = shifted_window_mask(4, 4, 2, 1)  # regions: rows [0,2) [2,3) [3,4), same for columns
    assert m.shape == (4, 4, 4)
    assert (m[0] == 0).all()                          # top-left window lies in region (0, 0)
    # bottom-right window holds tokens of regions (1,1), (1,2), (2,1), (2,2): all different
    assert (m[3] == -100.0).sum() == 12 and (torch.diagonal(m[3]) == 0).all()


def test_geometry_and_feature_info():
    """Outputs follow feature_info: ceil(H / stride) for sizes that are not multiples of 4 x 7."""
    torch.manual_seed(0)
    net = swin_mod.SwinTransformer(16, (1, 1, 1, 1), (1, 2, 2, 4), drop_path=0.0).eval()
    x = torch.randn(2, 3, 37, 61)
    out = net(x)
    for spec in net.feature_info:
        assert out[spec.name].shape == (2, spec.channels, *spec.output_size(37, 61))
    with pytest.raises(ValueError, match="expects an image batch"):
        net(torch.randn(3, 37, 61))
    with pytest.raises(ValueError, match="out_indices"):
        swin_mod.SwinTransformer(16, (1, 1, 1, 1), (1, 2, 2, 4), out_indices=(0, 4))


@pytest.mark.slow
def test_stage_outputs_equal_mmdet(monkeypatch):
    """Every stage output of Swin-T at 3x100x130 equals mmdet's (fp32, <= 1e-5 relative), with
    the weights written in the official layout and read back through our converter."""
    torch.set_num_threads(1)
    ref = np.load(PARITY_DIR / "swin_t.npz")
    seeded = seeded_swin("tiny")
    model = swin("tiny", drop_path=0.2).eval()
    model.load_state_dict(official_to_ours(ours_to_official(seeded.state_dict()), model, classifier=False))

    def check(net) -> float:
        with torch.no_grad():
            got = summarise({k: v.numpy() for k, v in net(parity_image()).items()})
        worst = 0.0
        for k in ref.files:
            if k.endswith("_shape"):
                assert tuple(got[k]) == tuple(ref[k]), k
                continue
            scale = np.abs(ref[k]).max()
            worst = max(worst, float(np.abs(got[k] - ref[k]).max() / scale))
        return worst

    assert check(model) <= 1e-5
    # a broken shift direction or a lost attention mask is seen
    orig_roll = torch.roll
    monkeypatch.setattr(swin_mod.torch, "roll", lambda x, shifts, dims: orig_roll(x, tuple(-s for s in shifts), dims))
    assert check(model) > 1e-3
    monkeypatch.setattr(swin_mod.torch, "roll", orig_roll)
    monkeypatch.setattr(swin_mod, "shifted_window_mask", lambda h, w, win, s, device=None: torch.zeros(
        (h // win) * (w // win), win * win, win * win))
    assert check(model) > 1e-3


def test_imagenet_importer_official_layout(tmp_path):
    """The official checkpoint layout ({"model": ...}, head/norm/attn_mask/relative_position_index)
    loads strictly; norm0..3 keep their initialisation; anything else missing or extra is refused."""
    torch.manual_seed(0)
    src = seeded_swin("tiny")
    ckpt = official_classifier_checkpoint(src)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(ckpt, path)
    dst = swin("tiny", drop_path=0.2)
    sd = load_imagenet_backbone(path, dst)
    for k, v in dst.state_dict().items():
        if k.startswith("norm"):
            assert torch.equal(v, torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)), k
        else:
            assert torch.equal(v, src.state_dict()[k]), k
    assert not any(k.startswith("norm") for k in sd)
    broken = dict(ckpt["model"])
    broken.pop("layers.2.blocks.5.mlp.fc2.bias")
    with pytest.raises(CheckpointMismatchError, match="layers.2.blocks.5.mlp.fc2.bias|stages.2.blocks.5.ffn"):
        convert_imagenet(broken, dst)
    broken = dict(ckpt["model"], **{"layers.0.blocks.0.attn.extra": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match="layers.0.blocks.0.attn.extra"):
        convert_imagenet(broken, dst)
    with torch.device("meta"):
        large = swin("large")
    with pytest.raises(CheckpointMismatchError, match="shape"):
        convert_imagenet(ckpt["model"], large)


def test_official_converter_round_trip_and_merge_order():
    """ours -> official -> ours is the identity; the patch-merging permutation is the one of
    mmdet's swin_converter (official [x00|x10|x01|x11] blocks vs Unfold c*4 + 2dy + dx)."""
    torch.manual_seed(0)
    net = swin_mod.SwinTransformer(8, (1, 1, 1, 1), (1, 1, 2, 2), drop_path=0.0)
    off = ours_to_official(net.state_dict())
    back = official_to_ours(off, net, classifier=False)
    assert set(back) == set(net.state_dict())
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())
    # official column k*C + c  ->  our column c*4 + j with j = [0, 2, 1, 3][k]
    c = 8
    w = np.arange(2 * c * 4 * c, dtype=np.float32).reshape(2 * c, 4 * c)
    ours = official_to_ours({**off, "layers.0.downsample.reduction.weight": w}, net, classifier=False)
    got = ours["stages.0.downsample.reduction.weight"].numpy()
    for k, j in enumerate([0, 2, 1, 3]):
        for ch in range(c):
            assert np.array_equal(got[:, ch * 4 + j], w[:, k * c + ch])
    idx = relative_position_index_entries(net.state_dict())
    assert len(idx) == 4 and all(v.shape == (49, 49) for v in idx.values())


def test_drop_path_schedule_and_frozen_stages():
    """Drop path rises linearly over all blocks (mmdet ``dpr``); ``frozen_stages`` freezes as mmdet's
    ``_freeze_stages`` (patch embedding, stages 0..s-1 and their norms; eval mode kept by ``train()``)."""
    net = swin_mod.SwinTransformer(8, (1, 2, 3, 2), (1, 1, 2, 2), drop_path=0.3, frozen_stages=2)
    blocks = [b for st in net.stages for b in st.blocks]
    expected = torch.linspace(0, 0.3, 8).tolist()
    assert [b.drop_path.drop_prob for b in blocks] == [b.attn.drop.drop_prob for b in blocks] == expected
    net.train()
    frozen = [net.patch_embed, net.stages[0], net.stages[1], net.norm0, net.norm1]
    assert all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in frozen)
    assert net.stages[2].training and all(p.requires_grad for p in net.stages[2].parameters())
    assert net.norm2.weight.requires_grad and net.stages[1].downsample.reduction.weight.requires_grad is False
