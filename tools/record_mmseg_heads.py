"""Record mmseg 0.30's ResNetV1c-50 and decode heads (FCN, PSP, ASPP, UPer, auxiliary
FCN) as the K-Net ADE20K configs build them: parameter counts, state-dict keys and shapes,
and outputs for seeded weights on seeded inputs (a golden fixture).

Weights: every state-dict entry named ``k`` (mmseg's name) is drawn from
``torch.Generator().manual_seed(zlib.crc32(k))`` (see :func:`seeded_value`), so the test
rebuilds the same weights from the names alone; ``tests/test_semantic_heads.py`` maps its
backbone keys to mmseg's. Inputs: ``torch.randn`` from seed 0 (image ``[1, 3, 35, 43]``)
and seed 1.. (head features). Outputs are stored as float64 sums, absolute sums and a
strided subsample (about 256 values, every ``step``-th), in ``tests/data/semantic/mmseg_heads_golden.json``.

Run OUTSIDE the repository's venv, with torch 2.13, mmcv 1.7.2 and mmsegmentation 0.30.0
(``/work/refs/venv-knet``; a stand-in ``torchvision`` with only ``__version__`` on
``PYTHONPATH``; ``mmcv._ext`` is stubbed here)::

    PYTHONPATH=/path/to/torchvision-stub /path/to/venv-knet/bin/python tools/record_mmseg_heads.py

Recorded with mmsegmentation 0.30.0, mmcv 1.7.2, torch 2.13.0 (CPU).
"""

from __future__ import annotations

import json
import sys
import types
import zlib
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "semantic" / "mmseg_heads_golden.json"
BN = dict(type="BN", requires_grad=True)
# Head feature inputs (channels, h, w) per backbone output at a 35x43 image, OS8 / OS32.
FEATS_OS8 = {"res2": (256, 9, 11), "res3": (512, 5, 6), "res4": (1024, 5, 6), "res5": (2048, 5, 6)}
FEATS_OS32 = {"res2": (256, 9, 11), "res3": (512, 5, 6), "res4": (1024, 3, 3), "res5": (2048, 2, 2)}


def seeded_value(key: str, like: torch.Tensor) -> torch.Tensor:
    """Deterministic entry for state-dict key ``key`` (shape/dtype of ``like``)."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if not like.is_floating_point():
        return like.clone()
    if key.endswith("running_var"):
        return torch.rand(like.shape, generator=g) + 0.5
    if key.endswith("running_mean") or key.endswith(".bias"):
        return torch.randn(like.shape, generator=g) * 0.1
    if like.dim() == 1:  # BN weight
        return torch.rand(like.shape, generator=g) + 0.5
    fan_in = like[0].numel()
    return torch.randn(like.shape, generator=g) * (2.0 / fan_in) ** 0.5


def features(spec: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((1, *s), generator=g) for k, s in spec.items()}


def summary(t: torch.Tensor) -> dict:
    t = t.detach().double().flatten()
    step = max(1, t.numel() // 256)
    return {"shape": None, "sum": float(t.sum()), "abs_sum": float(t.abs().sum()), "step": step,
            "sub": t[::step].tolist()}


def main() -> None:
    ext = types.ModuleType("mmcv._ext")  # compiled ops: present by name, raise if called

    def _missing(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def f(*a, **k):
            raise RuntimeError(f"mmcv._ext.{name} (compiled op) called: stand-in only")
        return f

    ext.__getattr__ = _missing
    sys.modules["mmcv._ext"] = ext
    import warnings

    warnings.filterwarnings("ignore")
    import mmseg
    from mmseg.models.backbones import ResNetV1c
    from mmseg.models.decode_heads import ASPPHead, FCNHead, PSPHead, UPerHead

    common = dict(num_classes=150, norm_cfg=BN, align_corners=False, dropout_ratio=0.1)
    heads = {
        "fcn": (FCNHead(in_channels=2048, in_index=3, channels=512, num_convs=2, concat_input=True, **common),
                FEATS_OS8),
        "pspnet": (PSPHead(in_channels=2048, in_index=3, channels=512, pool_scales=(1, 2, 3, 6), **common),
                   FEATS_OS8),
        "deeplabv3": (ASPPHead(in_channels=2048, in_index=3, channels=512, dilations=(1, 12, 24, 36), **common),
                      FEATS_OS8),
        "upernet": (UPerHead(in_channels=[256, 512, 1024, 2048], in_index=[0, 1, 2, 3], channels=256,
                             pool_scales=(1, 2, 3, 6), **common), FEATS_OS32),
        "aux_fcn": (FCNHead(in_channels=1024, in_index=2, channels=256, num_convs=1, concat_input=False, **common),
                    FEATS_OS8),
    }
    backbones = {
        "d8": ResNetV1c(depth=50, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                        strides=(1, 2, 1, 1), norm_cfg=BN, norm_eval=False, style="pytorch",
                        contract_dilation=True),
        "os32": ResNetV1c(depth=50, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 1, 1),
                          strides=(1, 2, 2, 2), norm_cfg=BN, norm_eval=False, style="pytorch",
                          contract_dilation=True),
    }
    out = {"source": f"mmsegmentation {mmseg.__version__}", "image_shape": [1, 3, 35, 43],
           "backbones": {}, "heads": {}}
    image = torch.randn((1, 3, 35, 43), generator=torch.Generator().manual_seed(0))
    for name, m in backbones.items():
        sd = m.state_dict()
        m.load_state_dict({k: seeded_value(k, v) for k, v in sd.items()})
        m.eval()
        with torch.no_grad():
            feats = m(image)
        out["backbones"][name] = {
            "params": sum(p.numel() for p in m.parameters()),
            "keys": {k: list(v.shape) for k, v in sd.items()},
            "outputs": [dict(summary(f), shape=list(f.shape)) for f in feats],
        }
    for i, (name, (head, spec)) in enumerate(heads.items()):
        sd = head.state_dict()
        head.load_state_dict({k: seeded_value(k, v) for k, v in sd.items()})
        head.eval()
        x = features(spec, seed=1 + i)
        with torch.no_grad():
            logits = head([x["res2"], x["res3"], x["res4"], x["res5"]])
        out["heads"][name] = {
            "params": sum(p.numel() for p in head.parameters()),
            "keys": {k: list(v.shape) for k, v in sd.items()},
            "input_spec": {k: list(v) for k, v in spec.items()}, "feature_seed": 1 + i,
            "logits": dict(summary(logits), shape=list(logits.shape)),
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, separators=(",", ":")))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    for k, v in {**out["backbones"], **out["heads"]}.items():
        print(k, v["params"])


if __name__ == "__main__":
    main()
