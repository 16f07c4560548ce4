"""deeplab2's AutoAugment (MaX-DeepLab-L recipe, spec ``max_deeplab.md`` §5).

Oracle 1: ``tests/data/deeplab2_autoaugment_golden.npz`` (``tools/record_deeplab2_autoaugment.py``,
deeplab2 @64bc1c1 ``autoaugment_utils`` run in TF 2.21): every operation at every magnitude
of both deeplab2 policies on three seeded images, compared bit for bit, and the decoded policies.
Oracle 2: hand-computed values below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kmax_deeplab.data.autoaugment import POLICIES, AutoAugment, apply_operation, contrast, posterize, solarize
from kmax_deeplab.data.transforms import LargeScaleJitter



GOLDEN = Path(__file__).parent / "data" / "deeplab2_autoaugment_golden.npz"


def test_operations_equal_deeplab2_bit_for_bit():
    rec = np.load(GOLDEN)
    keys = [k for k in rec.files if k.count("/") == 2 and not k.startswith("input/")]
    assert len(keys) == 60
    for key in keys:
        name, magnitude, image = key.split("/")
        got = apply_operation(rec[f"input/{image}"], name, float(magnitude))
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, rec[key], err_msg=key)


def test_policies_equal_deeplab2():
    theirs = json.loads(str(np.load(GOLDEN)["policies"]))
    ours = {k: [[list(op) for op in sub] for sub in v] for k, v in POLICIES.items()}
    assert ours == theirs
    assert POLICIES["simple_classification_policy"] == [
        [("Sharpness", 0.4, 7), ("Brightness", 0.2, 10)], [("Equalize", 0.0, 9), ("Contrast", 0.2, 10)],
        [("Sharpness", 0.2, 9), ("Color", 0.2, 9)], [("Solarize", 0.2, 7), ("Equalize", 0.6, 9)],
        [("Sharpness", 0.2, 1), ("Equalize", 0.2, 7)]]


def test_hand_computed():
    img = np.array([[[0, 127, 128], [200, 255, 64]]], np.uint8)  # 1x2 image
    # Posterize magnitude 10 -> 4 bits; Solarize magnitude 7 -> threshold int(0.7 * 256) = 179
    np.testing.assert_array_equal(posterize(img, 4), [[[0, 112, 128], [192, 240, 64]]])
    np.testing.assert_array_equal(apply_operation(img, "Solarize", 7), [[[0, 127, 128], [55, 0, 64]]])
    np.testing.assert_array_equal(solarize(img, 128), [[[0, 127, 127], [55, 0, 64]]])
    # Contrast factor 1.9 (magnitude 10): grey = #pixels / 256 = 2/256 -> 0; 0 + 1.9 (x - 0), clipped
    np.testing.assert_array_equal(contrast(img, 1.9), [[[0, 241, 243], [255, 255, 121]]])
    # Brightness factor 1.9: same blend with black; factor 0.1 truncates: int(0.1 * 255) = 25
    np.testing.assert_array_equal(apply_operation(img, "Brightness", 10), [[[0, 241, 243], [255, 255, 121]]])
    np.testing.assert_array_equal(apply_operation(img, "Brightness", 0), [[[0, 12, 12], [20, 25, 6]]])


def test_policy_draws_and_label_untouched():
    aug = AutoAugment("simple_classification_policy")
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    outs = [aug(img, np.random.default_rng(s)) for s in range(200)]
    changed = sum(not np.array_equal(o, img) for o in outs)
    # P(no op applied) = mean over sub-policies of prod(1 - p) = (0.6*0.8 + 0.8 + 0.8*0.8 + 0.8*0.4 + 0.8*0.8) / 5
    assert abs((200 - changed) / 200 - 0.576) < 0.1
    assert aug(img.astype(np.float32), np.random.default_rng(1)).dtype == np.float32
    with pytest.raises(ValueError, match="data.autoaugment: unknown AutoAugment policy 'x'"):
        AutoAugment("x")
    # in the training transform: ids are untouched, the image is augmented before the crop
    record = {"image": img, "panoptic": np.arange(256, dtype=np.int32).reshape(16, 16),
              "segments": [], "image_id": 0, "file_name": "x", "height": 16, "width": 16}
    plain = LargeScaleJitter((9, 9), 0.5, 1.5, flip=False, min_valid_pixels=-1)(record, np.random.default_rng(3))
    jitter = LargeScaleJitter((9, 9), 0.5, 1.5, flip=False, min_valid_pixels=-1, autoaugment=aug)
    augmented = jitter(record, np.random.default_rng(3))
    np.testing.assert_array_equal(plain["panoptic"], augmented["panoptic"])
