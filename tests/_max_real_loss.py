"""The real-image MaX loss case shared by ``tools/deeplab2_max_loss_real.py`` and its test.

numpy only (no TensorFlow, no torch). The ground truth is a real COCO val2017 photo's
panoptic annotation (``tests/data/coco_panoptic_panopticapi_sample``, image 439180: people,
horses, a car, crowd regions of people and horses, stuff), cut to the window
:data:`WINDOW` without resizing; the model outputs are seeded (:func:`seeded_outputs`) at
MaX-DeepLab-S's real sizes (128 slots, 134 classes with void, 128-d pixel features) on
the stride-4 grid of the window ((129 - 1) / 4 + 1 = 33).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).parent / "data" / "coco_panoptic_panopticapi_sample" / "sample_data"
IMAGE_ID = 439180
#: (top, left, height, width) of the crop, in pixels of the 480x640 image.
WINDOW = (150, 240, 129, 129)
NUM_SLOTS, NUM_CLASSES, FEATURE_DIM = 128, 134, 128  # deeplab2 channels: void (id 0) first
STRIDE4 = ((WINDOW[2] - 1) // 4 + 1, (WINDOW[3] - 1) // 4 + 1)
FIXTURE = Path(__file__).parent / "data" / "parity" / "max_deeplab" / "deeplab2_max_loss_real.npz"
#: (name, small-instance weight): deeplab2's MaX-S COCO dataset options (no small-instance
#: weighting) and MaX-L's (``increase_small_instance_weights: true``, weight 3.0, threshold 4096).
CASES = (("s", 1.0), ("l", 3.0))
SMALL_INSTANCE_THRESHOLD = 4096


def seeded_outputs(seed: int) -> dict[str, np.ndarray]:
    """Channels-last float32 outputs in deeplab2's layout (class / semantic channel 0 = void).

    ``mask_logits [1, 33, 33, 128]``, ``feature [1, 33, 33, 128]`` (unit L2 norm),
    ``class_logits [1, 128, 134]``, ``semantic_logits [1, 33, 33, 134]``.
    """
    rng = np.random.default_rng([seed, IMAGE_ID])
    h, w = STRIDE4
    feat = rng.standard_normal((1, h, w, FEATURE_DIM)).astype(np.float32)
    feat /= np.linalg.norm(feat, axis=-1, keepdims=True)
    masks = (3.0 * rng.standard_normal((1, h, w, NUM_SLOTS))).astype(np.float32)
    classes = (2.0 * rng.standard_normal((1, NUM_SLOTS, NUM_CLASSES))).astype(np.float32)
    semantic = (1.5 * rng.standard_normal((1, h, w, NUM_CLASSES))).astype(np.float32)
    return {"mask_logits": masks, "feature": feat, "class_logits": classes, "semantic_logits": semantic}
