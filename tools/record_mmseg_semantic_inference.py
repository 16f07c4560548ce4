"""Record mmseg 0.30's semantic test-time inference on a stand-in model: whole image and sliding
window, flip and multi-scale TTA, as ``EncoderDecoder.inference`` / ``aug_test`` and the
``MultiScaleFlipAug`` test pipeline run them. Golden fixture of
``tests/test_semantic_inference.py``: ``tests/data/semantic/mmseg_semantic_inference.npz``.

The stand-in decode function (``encode_decode`` of an ``EncoderDecoder`` whose backbone and
decode head are replaced): ``x / 64`` average-pooled 2x2 (stride 2, ``ceil_mode``), a 3x3 conv
3 -> 5 channels (padding 1) whose weight and bias are ``torch.randn`` from
``torch.Generator().manual_seed(0)`` (weight first, times 0.5), then mmseg's own resize of
the logits to the input (bilinear, ``align_corners`` of the case). The image is a seeded
uint8 ``[23, 37, 3]`` array (``numpy.random.default_rng(0)``, smoothed so resizing matters).
The pipeline is ``MultiScaleFlipAug(img_scale, img_ratios, flip, flip_direction,
transforms=[Resize(keep_ratio=True), RandomFlip, Normalize(mean 0, std 1, to_rgb=False),
ImageToTensor])``: the uint8 image each pass resized to (OpenCV bilinear through
``mmcv.imrescale``) is stored unflipped, so the test feeds our function the same pixels (our
own resize is within one level of OpenCV's, tested in ``test_data_semantic.py``). Also stored:
each pass's ``img_shape`` and ``flip``/``flip_direction``, and mmseg's ADE20K ``PALETTE``.

Run OUTSIDE the repository's venv, with torch 2.13, mmcv 1.7.2 and mmsegmentation 0.30.0
(``/work/refs/venv-knet``; a stand-in ``torchvision`` with only ``__version__`` on
``PYTHONPATH``; ``mmcv._ext`` is stubbed here)::

    PYTHONPATH=/path/to/torchvision-stub /path/to/venv-knet/bin/python tools/record_mmseg_semantic_inference.py

Recorded with mmsegmentation 0.30.0, mmcv 1.7.2, torch 2.13.0 (CPU), opencv-python 4.9.0.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "semantic" / "mmseg_semantic_inference.npz"
NUM_CLASSES = 5
IMAGE_SHAPE = (23, 37)

# name -> (test_cfg, MultiScaleFlipAug arguments, align_corners)
CASES = {
    "whole": (dict(mode="whole"), dict(img_scale=(48, 20)), False),
    "slide": (dict(mode="slide", crop_size=(12, 12), stride=(8, 8)), dict(img_scale=(48, 20)), False),
    "slide_align": (dict(mode="slide", crop_size=(9, 14), stride=(5, 11)), dict(img_scale=(60, 30)), True),
    "slide_big_crop": (dict(mode="slide", crop_size=(16, 40), stride=(6, 10)), dict(img_scale=(48, 20)), False),
    "whole_ms_flip": (dict(mode="whole"), dict(img_scale=(48, 20), img_ratios=[0.5, 1.0, 1.5], flip=True), False),
    "slide_ms_flip2": (dict(mode="slide", crop_size=(12, 12), stride=(8, 8)),
                       dict(img_scale=(48, 20), img_ratios=[0.75, 1.25], flip=True,
                            flip_direction=["horizontal", "vertical"]), False),
    "whole_ratios_only": (dict(mode="whole"), dict(img_scale=None, img_ratios=[0.5, 1.0]), False),
}


def stand_in_conv() -> nn.Conv2d:
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return conv


def seeded_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (IMAGE_SHAPE[0] + 2, IMAGE_SHAPE[1] + 2, 3))
    x = (x[:-2, :-2] + x[1:-1, 1:-1] + x[2:, 2:]) / 3  # mild smoothing
    return np.round(x).astype(np.uint8)


def _stub_ext() -> None:
    ext = types.ModuleType("mmcv._ext")  # compiled ops: present by name, raise if called

    def _missing(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def f(*a, **k):
            raise RuntimeError(f"mmcv._ext.{name} (compiled op) called: stand-in only")
        return f

    ext.__getattr__ = _missing
    sys.modules["mmcv._ext"] = ext


def main() -> None:
    _stub_ext()
    import warnings

    warnings.filterwarnings("ignore")
    import mmcv
    import mmseg
    from mmseg.datasets import ADE20KDataset
    from mmseg.datasets.pipelines import MultiScaleFlipAug
    from mmseg.models.segmentors import EncoderDecoder

    conv = stand_in_conv().eval()

    class Head:
        def forward_test(self, x, img_metas, test_cfg):
            return conv(x)

    class Backbone(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x / 64.0, 2, stride=2, ceil_mode=True)

    image = seeded_image()
    out: dict[str, np.ndarray] = {"image": image, "ade20k_palette": np.asarray(ADE20KDataset.PALETTE, np.uint8)}
    meta: dict = {"source": f"mmsegmentation {mmseg.__version__}, mmcv {mmcv.__version__}, torch {torch.__version__}",
                  "cases": {}}
    for name, (test_cfg, aug, align) in CASES.items():
        model = EncoderDecoder.__new__(EncoderDecoder)
        nn.Module.__init__(model)
        model.backbone = Backbone()
        model.decode_head = Head()
        model.align_corners = align
        model.out_channels = NUM_CLASSES
        model.test_cfg = mmcv.ConfigDict(test_cfg)
        pipeline = MultiScaleFlipAug(
            transforms=[dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"),
                        dict(type="Normalize", mean=[0, 0, 0], std=[1, 1, 1], to_rgb=False),
                        dict(type="ImageToTensor", keys=["img"])], **aug)
        h, w = image.shape[:2]
        data = pipeline({"img": image.copy(), "ori_shape": image.shape, "img_shape": image.shape,
                         "pad_shape": image.shape, "scale_factor": 1.0, "seg_fields": []})
        imgs = [t[None].float() for t in data["img"]]
        metas = [[{"ori_shape": image.shape, "img_shape": s, "flip": f, "flip_direction": d}]
                 for s, f, d in zip(data["img_shape"], data["flip"], data["flip_direction"])]
        passes = []
        for t, m in zip(imgs, metas):
            x = t[0].permute(1, 2, 0).numpy()
            if m[0]["flip"]:
                x = x[:, ::-1] if m[0]["flip_direction"] == "horizontal" else x[::-1]
            key = f"resized_{x.shape[0]}x{x.shape[1]}"
            resized = np.round(x).astype(np.uint8)
            assert np.array_equal(resized.astype(np.float32), x)
            if key in out:
                assert np.array_equal(out[key], resized)
            out[key] = resized
            passes.append({"img_shape": list(m[0]["img_shape"][:2]), "flip": bool(m[0]["flip"]),
                           "flip_direction": m[0]["flip_direction"]})
        with torch.no_grad():
            if len(imgs) == 1:  # simple_test's path
                probs = model.inference(imgs[0], metas[0], rescale=True)
                pred = model.simple_test(imgs[0], metas[0], rescale=True)[0]
            else:
                probs = torch.from_numpy(model.aug_test_logits(imgs, metas, rescale=True))
                pred = model.aug_test(imgs, metas, rescale=True)[0]
            if test_cfg["mode"] == "slide":  # the raw window average at the first pass's size
                out[f"{name}_slide_raw"] = model.slide_inference(imgs[0], metas[0], rescale=False)[0].numpy()
        out[f"{name}_probs"] = probs[0].numpy().astype(np.float32)
        out[f"{name}_pred"] = np.asarray(pred, np.uint8)
        meta["cases"][name] = {"test_cfg": test_cfg, "aug": aug, "align_corners": align, "passes": passes}
    out["meta_json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
