"""ImageNet backbone files -> our backbone names (torchvision/detectron2 R50, FB/timm ConvNeXt)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from _ckpt_layouts import read_tsv
from kmax_deeplab.checkpoints.imagenet import convert_imagenet
from kmax_deeplab.checkpoints.table import CheckpointMismatchError
from kmax_deeplab.checkpoints.zoo import ZOO


def _backbone(layouts, name):
    bd = read_tsv(layouts / f"bytedance_kmax_{name}_coco.keys.tsv")
    return {k[len("backbone."):]: s for k, s in bd.items() if k.startswith("backbone.")}


def _rand(shapes):
    g = torch.Generator().manual_seed(0)
    return {k: (torch.zeros(s, dtype=torch.int64) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
            for k, s in shapes.items()}


def _to_torchvision(name):
    name = re.sub(r"^stem\.conv1\.norm\.", "bn1.", name)
    name = re.sub(r"^stem\.conv1\.", "conv1.", name)
    m = re.match(r"res(\d)\.(\d+)\.(.*)", name)
    if m:
        rest = m.group(3)
        rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
        rest = rest.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
        name = f"layer{int(m.group(1)) - 1}.{m.group(2)}.{rest}"
    return name


def _to_timm(name):
    name = re.sub(r"^downsample_layers\.0\.", "stem.", name)
    name = re.sub(r"^downsample_layers\.(\d)\.", r"stages.\1.downsample.", name)
    name = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", name)
    return name.replace("dwconv", "conv_dw").replace("pwconv1", "mlp.fc1").replace("pwconv2", "mlp.fc2")


def test_torchvision_and_detectron2_resnet(checkpoint_layouts):
    shapes = _backbone(checkpoint_layouts, "r50")
    ours = _rand(shapes)
    tv = {_to_torchvision(k): v for k, v in ours.items()}
    assert "layer4.2.bn3.running_var" in tv and "layer1.0.downsample.1.weight" in tv
    tv["fc.weight"] = torch.zeros(1000, 2048)
    sd = convert_imagenet(tv, shapes)
    assert set(sd) == set(shapes) and all(torch.equal(sd[k], ours[k]) for k in ours)
    d2 = {k: v.numpy() for k, v in ours.items() if not k.endswith("num_batches_tracked")}
    sd2 = convert_imagenet(d2, shapes)
    assert torch.equal(sd2["res5.2.conv3.weight"], ours["res5.2.conv3.weight"])


def test_fb_and_timm_convnext(checkpoint_layouts):
    shapes = _backbone(checkpoint_layouts, "convnext_tiny")
    ours = _rand(shapes)
    fb = dict(ours, **{"norm.weight": torch.ones(768), "norm.bias": torch.zeros(768),
                       "head.weight": torch.zeros(1000, 768), "head.bias": torch.zeros(1000)})
    sd = convert_imagenet(fb, shapes)  # FB file: final norm + head dropped as BD does
    assert set(sd) == set(shapes)
    timm = {_to_timm(k): v for k, v in ours.items()}
    assert "stages.2.blocks.8.mlp.fc1.weight" in timm and "stem.1.weight" in timm
    timm["head.fc.weight"] = torch.zeros(1000, 768)
    sd = convert_imagenet(timm, shapes)
    assert all(torch.equal(sd[k], ours[k]) for k in ours)


def test_resnet_into_convnext_refused(checkpoint_layouts):
    with pytest.raises(CheckpointMismatchError, match="not used by the model"):
        convert_imagenet(_rand(_backbone(checkpoint_layouts, "r50")), _backbone(checkpoint_layouts, "convnext_tiny"))


def test_readme_lists_every_zoo_checkpoint():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, e in ZOO.items():
        assert f"`kmax predict IMAGES -o preds/ --model {name}`" in readme, name
        assert f"| `{name}` |" in readme and f"| {e.pq}" in readme, name
    assert "kmax convert --from deeplab2" in readme and "kmax convert --from detectron2" in readme


def test_readme_commands_parse():
    """Every ``kmax convert``/``kmax predict`` command in the README is accepted by the real parser."""
    import re
    import shlex

    from kmax_deeplab.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = re.findall(r"^(kmax (?:convert|predict) [^#\n]*)", readme, flags=re.M)
    commands += re.findall(r"`(kmax (?:convert|predict) [^`]*)`", readme)
    assert len(commands) > len(ZOO)
    parser = build_parser()
    for cmd in commands:
        args = parser.parse_args(shlex.split(cmd.replace("IMAGES...", "a.jpg").replace("IMAGES", "a.jpg"))[1:])
        if args.command == "convert":
            from kmax_deeplab.config import get_preset

            get_preset(args.config)  # the preset exists
