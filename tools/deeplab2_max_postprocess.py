#!/usr/bin/env python
"""Record deeplab2's MaX-DeepLab "pixelwise" post-processing on seeded cases.

Reference: google-research/deeplab2 @64bc1c1, ``model/post_processor/max_deeplab.py``
``_get_panoptic_predictions`` (``transformer_post_processing='pixelwise'``, class
threshold 0.7, pixel threshold 0.4), TensorFlow 2.21 CPU. Toy label space: ids 1, 2
things, 3, 4 stuff, 0 void, label divisor 256. Mask logits ``[9, 9, N=6]`` on a 33x33
canvas, area limits thing 20 / stuff 40 pixels, class logits scaled so that some slots
pass the threshold; the last case has no confident slot. Writes
``tests/data/parity/max_deeplab/deeplab2_max_postprocess.npz`` (inputs + deeplab2's
panoptic maps ``semantic * 256 + instance``).

Run: TF_USE_LEGACY_KERAS=1 PYTHONPATH=/work/refs/deeplab2/src /work/refs/venv-tf/bin/python tools/deeplab2_max_postprocess.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _max_parity import DATA  # noqa: E402

CASES = [(0, 4.0), (1, 4.0), (2, 3.0), (3, 5.0), (4, 0.1)]  # (seed, class-logit scale)


def main() -> None:
    from deeplab2.model.post_processor import max_deeplab as pp

    record = {}
    for seed, scale in CASES:
        rng = np.random.default_rng(seed)
        masks = (3.0 * rng.standard_normal((9, 9, 6))).astype(np.float32)
        classes = (scale * rng.standard_normal((6, 5))).astype(np.float32)
        out = pp._get_panoptic_predictions(
            tf.constant(masks[None, None]), tf.constant(classes[None]), thing_class_ids=[1, 2], void_label=0,
            label_divisor=256, thing_area_limit=20, stuff_area_limit=40, image_shape=[33, 33],
            pixel_confidence_threshold=0.4, transformer_class_confidence_threshold=0.7,
            transformer_post_processing="pixelwise")
        panoptic = out[0].numpy()[0, 0]
        record[f"case{seed}/mask_logits"] = masks
        record[f"case{seed}/class_logits"] = classes
        record[f"case{seed}/panoptic"] = panoptic.astype(np.int32)
        print(seed, "segments", np.unique(panoptic).tolist())
    np.savez_compressed(DATA / "deeplab2_max_postprocess.npz", **record)
    print("wrote", DATA / "deeplab2_max_postprocess.npz")


if __name__ == "__main__":
    main()
