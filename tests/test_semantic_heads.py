"""ResNetV1c-50 and the mmseg decode heads (FCN, PSPNet, DeepLabv3, UPerNet, auxiliary
FCN) == mmsegmentation 0.30's own modules.

Oracle: ``tests/data/semantic/mmseg_heads_golden.json`` (``tools/record_mmseg_heads.py``,
mmseg's classes built as the K-Net ADE20K configs build them, run on CPU): parameter
counts, state-dict keys and shapes, and outputs for weights seeded by mmseg key name.
The auxiliary head's count also equals the issue's 45,660,300 - 43,261,942.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from kmax_deeplab.modeling.backbones.resnet import resnet_v1c
from kmax_deeplab.modeling.semantic import build_decode_head

GOLDEN = json.loads((Path(__file__).parent / "data" / "semantic" / "mmseg_heads_golden.json").read_text())
_spec = importlib.util.spec_from_file_location(
    "record_mmseg_heads", Path(__file__).parents[1] / "tools" / "record_mmseg_heads.py")
_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tool)  # seeded_value / features: the same weights and inputs as the recording


def mmseg_backbone_key(key: str) -> str:
    """Our ResNet key -> mmseg ``ResNetV1c`` key."""
    m = re.fullmatch(r"stem\.conv(\d)\.(weight|norm\.(.+))", key)
    if m:
        i = 3 * (int(m.group(1)) - 1)
        return f"stem.{i}.weight" if m.group(3) is None else f"stem.{i + 1}.{m.group(3)}"
    m = re.fullmatch(r"res(\d)\.(\d+)\.(conv(\d)|shortcut)\.(weight|norm\.(.+))", key)
    assert m, key
    layer, block, rest = f"layer{int(m.group(1)) - 1}", m.group(2), m.group(6)
    if m.group(3) == "shortcut":
        return f"{layer}.{block}.downsample.{'0.weight' if rest is None else '1.' + rest}"
    j = m.group(4)
    return f"{layer}.{block}.conv{j}.weight" if rest is None else f"{layer}.{block}.bn{j}.{rest}"


def _check(t: torch.Tensor, ref: dict, what: str) -> None:
    assert list(t.shape) == ref["shape"], what
    t = t.detach().double().flatten()
    scale = t.abs().max().item()
    torch.testing.assert_close(t[::ref["step"]], torch.tensor(ref["sub"], dtype=torch.float64),
                               rtol=1e-4, atol=1e-5 * scale, msg=what)
    assert abs(t.sum().item() - ref["sum"]) <= 1e-4 * ref["abs_sum"], what


def test_counts_keys():
    for name, dilated in (("d8", True), ("os32", False)):
        ours = resnet_v1c(50, dilated=dilated)
        ref = GOLDEN["backbones"][name]
        assert sum(p.numel() for p in ours.parameters()) == ref["params"] == 23_527_264
        mapped = {mmseg_backbone_key(k): list(v.shape) for k, v in ours.state_dict().items()}
        assert mapped == ref["keys"]
    for kind, ref in GOLDEN["heads"].items():
        head = build_decode_head(kind)
        assert sum(p.numel() for p in head.parameters()) == ref["params"], kind
        assert {k: list(v.shape) for k, v in head.state_dict().items()} == ref["keys"], kind  # mmseg names
    assert GOLDEN["heads"]["aux_fcn"]["params"] == 45_660_300 - 43_261_942  # the numbers


@pytest.mark.slow
@pytest.mark.parametrize("name", ["d8", "os32"])
def test_backbone_outputs(name):
    ours = resnet_v1c(50, dilated=name == "d8").eval()
    ours.load_state_dict({k: _tool.seeded_value(mmseg_backbone_key(k), v) for k, v in ours.state_dict().items()})
    image = torch.randn(GOLDEN["image_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ours(image)
    for feat, ref in zip(("res2", "res3", "res4", "res5"), GOLDEN["backbones"][name]["outputs"]):
        _check(out[feat], ref, f"{name} {feat}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fcn", "pspnet", "deeplabv3", "upernet", "aux_fcn"])
def test_head_logits(kind):
    ref = GOLDEN["heads"][kind]
    head = build_decode_head(kind).eval()
    head.load_state_dict({k: _tool.seeded_value(k, v) for k, v in head.state_dict().items()})
    x = _tool.features({k: tuple(v) for k, v in ref["input_spec"].items()}, ref["feature_seed"])
    with torch.no_grad():
        logits = head(x)
        feats = head.forward_features(x)
    _check(logits, ref["logits"], kind)
    assert feats.shape[1] == head.channels and feats.shape[2:] == logits.shape[2:]


def test_knet_upernet_total_from_parts():
    """The issue's K-Net + UPerNet R-50 totals (the original code run on CPU: 45,660,300;
    43,261,942 without the auxiliary head) = ResNetV1c-50 (OS32) + UPerHead + 3 kernel
    update stages of 256 channels without a class branch (``knet/seg/kernel_update_head.py``
    has ``mask_fcs`` / ``fc_mask`` only) + the auxiliary FCN head. Guards the parts the
    semantic iterative head will be assembled from."""
    from kmax_deeplab.modeling.knet.kernel_update import KernelUpdateHead

    stage = KernelUpdateHead(150, num_cls_fcs=0, gather="softmax")
    per_stage = sum(p.numel() for n, p in stage.named_parameters() if not n.startswith("fc_cls"))
    total = (sum(p.numel() for p in resnet_v1c(50, dilated=False).parameters())
             + sum(p.numel() for p in build_decode_head("upernet").parameters()) + 3 * per_stage)
    assert total == 43_261_942
    assert total + sum(p.numel() for p in build_decode_head("aux_fcn").parameters()) == 45_660_300
