"""Record mmseg 0.30 / mmcv 1.7.2 (OpenCV) outputs of the semantic training pipeline's
deterministic parts, on seeded inputs (a golden fixture).

For ``tests/test_data_semantic.py``: ``mmseg.datasets.pipelines.Resize`` (ratio mode,
``img_scale=(2048, 512)``, the ratio fixed by patching mmseg's ``numpy.random``) on
seeded images + label maps of several sizes (output size, the nearest-resized label, the
bilinear image); ``RandomCrop(cat_max_ratio=0.75)`` with scripted window offsets (which
window it keeps); ``PhotoMetricDistortion`` with scripted draws (the output image);
``LoadAnnotations(reduce_zero_label=True)`` on a PNG. Writes
``tests/data/semantic/mmseg_pipeline_golden.npz``.

Run OUTSIDE the repository's venv, with mmcv 1.7.2 + mmsegmentation 0.30.0 + OpenCV
(``/work/refs/venv-knet``; a stand-in ``torchvision`` with only ``__version__`` on
``PYTHONPATH``; ``mmcv._ext`` is stubbed here)::

    PYTHONPATH=/path/to/torchvision-stub /path/to/venv-knet/bin/python tools/record_mmseg_pipeline.py

Recorded with mmsegmentation 0.30.0, mmcv 1.7.2, opencv-python 4.9.0.
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "semantic" / "mmseg_pipeline_golden.npz"

# (h, w, ratio): sizes that round both ways, up- and down-scaling.
RESIZE_CASES = [(37, 53, 0.5), (53, 37, 1.37), (41, 41, 0.61), (30, 71, 1.99), (64, 48, 0.73)]


class Scripted:
    """Stand-in for mmseg's ``numpy.random``: returns scripted values in order."""

    def __init__(self, values):
        self.values = list(values)

    def _next(self, *a, **k):
        return self.values.pop(0)

    randint = uniform = random_sample = rand = _next


def main() -> None:
    ext = types.ModuleType("mmcv._ext")
    ext.__getattr__ = lambda n: (_ for _ in ()).throw(AttributeError(n))
    sys.modules["mmcv._ext"] = ext
    import warnings

    warnings.filterwarnings("ignore")
    import cv2
    import mmcv
    from PIL import Image
    import mmseg.datasets.pipelines.transforms as T
    from mmseg.datasets.pipelines import LoadAnnotations

    rng = np.random.default_rng(0)
    out = {}
    for i, (h, w, ratio) in enumerate(RESIZE_CASES):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        seg = rng.integers(0, 20, (h, w)).astype(np.uint8)
        T.np.random = Scripted([(ratio - 0.5) / 1.5])  # random_sample() -> ratio
        r = T.Resize(img_scale=(2048 // 16, 512 // 16), ratio_range=(0.5, 2.0))(
            {"img": img.copy(), "gt_semantic_seg": seg.copy(), "seg_fields": ["gt_semantic_seg"]})
        out[f"resize{i}_in_img"], out[f"resize{i}_in_seg"] = img, seg
        out[f"resize{i}_ratio"] = np.float64(ratio)
        out[f"resize{i}_img"], out[f"resize{i}_seg"] = r["img"], r["gt_semantic_seg"]
    T.np.random = np.random

    # RandomCrop: label with one dominant class; scripted offsets (offset_h, offset_w) pairs.
    seg = np.zeros((40, 40), np.uint8)
    seg[:, 30:] = 1
    seg[:5, :5] = 255
    offsets = [0, 0, 3, 2, 5, 1, 7, 7, 9, 20, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 8, 8]
    for name, offs in (("crop_found", offsets), ("crop_never", [0, 0] * 11)):
        s = seg if name == "crop_found" else np.zeros((40, 40), np.uint8)
        T.np.random = Scripted(offs)
        r = T.RandomCrop((20, 20), cat_max_ratio=0.75)(
            {"img": np.zeros((40, 40, 3), np.uint8), "gt_semantic_seg": s.copy(),
             "seg_fields": ["gt_semantic_seg"]})
        out[f"{name}_offsets"] = np.array(offs, np.int64)
        out[f"{name}_used"] = np.int64(len(offs) - len(T.np.random.values))
        out[f"{name}_seg"] = r["gt_semantic_seg"]
    out["crop_seg"] = seg
    T.np.random = np.random

    # PhotoMetricDistortion: scripted coins/values; mmseg works on BGR (mmcv.imread), so
    # the RGB image is flipped to BGR in and back out.
    img = rng.integers(0, 256, (24, 31, 3), dtype=np.uint8)
    scripts = {
        "pmd_bc": [1, 20.5, 1, 1, 1.3, 0, 0],            # brightness, contrast first
        "pmd_contrast_last": [0, 0, 0, 0, 1, 0.6],        # contrast last
        "pmd_sat": [0, 0, 1, 1.4, 0, 0],                  # saturation only
        "pmd_hue": [0, 0, 0, 1, -7, 0],                   # hue only
    }
    out["pmd_in"] = img
    import mmseg.datasets.pipelines.transforms as TT
    for name, vals in scripts.items():
        TT.random = Scripted(vals)
        r = TT.PhotoMetricDistortion()({"img": img[..., ::-1].copy()})
        out[name] = r["img"][..., ::-1].copy()
        out[f"{name}_script"] = np.array(vals, np.float64)
    TT.random = np.random

    # LoadAnnotations(reduce_zero_label=True) on a PNG with 0, 1, 150 and 255.
    lab = np.array([[0, 1, 2], [150, 255, 7]], np.uint8)
    with tempfile.TemporaryDirectory() as d:
        Image.fromarray(lab).save(Path(d) / "a.png")
        r = LoadAnnotations(reduce_zero_label=True)({"seg_prefix": d, "ann_info": {"seg_map": "a.png"}, "seg_fields": []})
    out["reduce_in"], out["reduce_out"] = lab, r["gt_semantic_seg"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); cv2 {cv2.__version__}, mmcv {mmcv.__version__}")


if __name__ == "__main__":
    main()
