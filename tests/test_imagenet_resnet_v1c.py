"""ImageNet ResNetV1c (mmcv ``open-mmlab://resnetv1c50``) -> the semantic K-Net's backbone.

Oracle: the backbone names and shapes of mmseg 0.30's own K-Net FCN R-50-D8 config built on CPU
(``tests/data/semantic/mmseg_knet_zoo_keys.json.gz``, ``tools/record_mmseg_knet_keys.py``). An
mmcv ImageNet ResNetV1c file holds exactly those entries without ``backbone.`` plus ``fc.*``; its
names must land where the (parity-checked) mmseg importer puts the same tensors.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from kmax_deeplab.checkpoints.imagenet import convert_imagenet, detect_imagenet_format
from kmax_deeplab.checkpoints.mmseg import MMSEG_TO_OURS
from kmax_deeplab.checkpoints.table import apply_rows

KEYS = Path(__file__).parent / "data" / "semantic" / "mmseg_knet_zoo_keys.json.gz"


def _imagenet_v1c(seed: int = 0) -> dict[str, torch.Tensor]:
    layout = json.loads(gzip.open(KEYS).read())["knet_s3_fcn_r50-d8_8x2_512x512_adamw_80k_ade20k"]
    g = torch.Generator().manual_seed(seed)
    state = {k.removeprefix("backbone."): torch.randn(shape, generator=g) if shape else torch.tensor(0)
             for k, shape in layout.items() if k.startswith("backbone.")}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048, generator=g), torch.zeros(1000)
    return state


@pytest.mark.slow
def test_v1c_file_loads_strictly_where_the_mmseg_importer_puts_it():
    from kmax_deeplab.modeling.backbones.resnet import resnet_v1c

    state = _imagenet_v1c()
    assert detect_imagenet_format(list(state)) == "mmcv_resnet_v1c"
    backbone = resnet_v1c(50, dilated=True)
    ours = convert_imagenet(state, backbone, strict=True)
    assert set(ours) == set(backbone.state_dict())  # every backbone entry produced, fc dropped
    via_mmseg, _, _ = apply_rows({f"backbone.{k}": v.numpy() for k, v in state.items() if not k.startswith("fc.")},
                                 MMSEG_TO_OURS)
    assert {k.removeprefix("backbone."): v for k, v in via_mmseg.items()}.keys() == ours.keys()
    for k, v in via_mmseg.items():
        assert torch.equal(torch.as_tensor(v), ours[k.removeprefix("backbone.")]), k
    backbone.load_state_dict(ours, strict=True)
    # a torchvision ResNet-50 is not taken for a V1c (its stem is one 7x7 conv): one clear refusal
    tv = {("conv1.weight" if k == "stem.0.weight" else k): v for k, v in state.items()
          if not k.startswith("stem.")}
    assert detect_imagenet_format(list(tv)) == "torchvision_resnet"
    with pytest.raises(Exception, match="stem"):
        convert_imagenet(tv, backbone, strict=True)
