"""deeplab2's discrete random scale (``data.scale_step``; ``preprocess_utils.get_random_scale``).

The expected values were read off TensorFlow 2 (``tf.linspace`` with deeplab2's step count,
/work/refs/venv-tf, 2026-12-01), including deeplab2's count quirk for 0.1..2.0 (19 values).
"""

from __future__ import annotations

import numpy as np
import pytest

from kmax_deeplab.config import get_preset
from kmax_deeplab.data.transforms import LargeScaleJitter, random_scale, scale_choices

TF = {
    (0.5, 1.5, 0.1): [0.5, 0.6000000238418579, 0.699999988079071, 0.800000011920929, 0.8999999761581421, 1.0,
                      1.100000023841858, 1.2000000476837158, 1.2999999523162842, 1.4000000953674316, 1.5],
    (0.1, 2.0, 0.1): [0.10000000149011612, 0.20555555820465088, 0.31111112236976624, 0.4166666567325592,
                      0.5222222208976746, 0.6277778148651123, 0.7333333492279053, 0.838888943195343,
                      0.944444477558136, 1.0499999523162842, 1.1555556058883667, 1.2611111402511597,
                      1.3666666746139526, 1.4722222089767456, 1.5777778625488281, 1.683333396911621,
                      1.788888931274414, 1.894444465637207, 2.0],
    (0.5, 2.0, 0.25): [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0],
}


@pytest.mark.parametrize("key", list(TF))
def test_choices_equal_tensorflow(key):
    got = scale_choices(*key)
    assert got.dtype == np.float32
    assert got.tolist() == TF[key]


def test_draws_cover_the_choices_evenly_and_step_zero_is_uniform():
    rng = np.random.default_rng(0)
    draws = [random_scale(0.5, 1.5, 0.1, rng) for _ in range(5500)]
    values, counts = np.unique(np.float32(draws), return_counts=True)
    assert values.tolist() == TF[(0.5, 1.5, 0.1)]
    assert counts.min() > 400 and counts.max() < 600  # 500 each expected
    cont = [random_scale(0.5, 1.5, 0.0, rng) for _ in range(200)]
    assert len(set(cont)) == 200 and 0.5 <= min(cont) and max(cont) < 1.5
    assert random_scale(1.0, 1.0, 0.1, rng) == 1.0


def test_max_presets_use_deeplab2_steps_and_the_jitter_obeys():
    for name in ("coco/max_deeplab_s_641", "coco/max_deeplab_l_1025"):
        assert get_preset(name).data.scale_step == 0.1
    assert get_preset("coco/kmax_r50").data.scale_step == 0.0  # bytedance: continuous
    jitter = LargeScaleJitter((64, 64), 0.5, 1.5, scale_step=0.5, min_valid_pixels=-1, flip=False)
    record = {"image": np.zeros((64, 64, 3), np.uint8), "panoptic": np.ones((64, 64), np.int32), "segments": []}
    rng = np.random.default_rng(1)
    # scales {0.5, 1.0, 1.5}: the resized 64x64 square is 32, 64 or 96 wide, cropped to <= 64 and padded
    sizes = set()
    for _ in range(60):
        out = jitter.sample_once(record, rng)
        sizes.add(int((out["panoptic"] == 1).sum(axis=1).max()))
    assert sizes == {32, 64}
