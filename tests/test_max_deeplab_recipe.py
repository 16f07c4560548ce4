"""MaX-DeepLab-L's recipe details (spec ``max_deeplab.md`` §5; deeplab2
``configs/coco/max_deeplab/max_deeplab_l_os16_res1025_*.textproto``): AutoAugment
``simple_classification_policy`` and ``increase_small_instance_weights`` (weight 3,
``small_instance_threshold`` 4096, deeplab2's ``dataset.proto`` default) in the preset, the
training transform and the loss targets. The weights themselves are checked against
deeplab2's ``PanopticSampleGenerator`` on a real image in ``test_max_deeplab_loss_real.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kmax_deeplab.config import load_config
from kmax_deeplab.config.validate import ConfigError, validate_config
from kmax_deeplab.data.autoaugment import AutoAugment
from kmax_deeplab.data.targets import prepare_image_targets
from kmax_deeplab.data.transforms import build_transforms
from kmax_deeplab.engine.build import make_prepare_batch, small_instance_weighting


def test_presets_carry_deeplab2_dataset_options():
    large, small = load_config("coco/max_deeplab_l_1025"), load_config("coco/max_deeplab_s_641")
    assert (large.data.autoaugment, large.data.small_instance_weight, large.data.small_instance_threshold) == (
        "simple_classification_policy", 3.0, 4096)
    assert (small.data.autoaugment, small.data.small_instance_weight) == ("", 1.0)
    aug = build_transforms(large.data, is_train=True).autoaugment
    assert isinstance(aug, AutoAugment) and aug.policy_name == "simple_classification_policy"
    assert build_transforms(small.data, is_train=True).autoaugment is None
    weighting = small_instance_weighting(large)
    assert weighting["small_instance_weight"] == 3.0 and weighting["small_instance_threshold"] == 4096
    assert weighting["thing_classes"] == list(range(80))
    assert small_instance_weighting(small) == {}


def test_bad_values_are_named():
    cfg = load_config("coco/max_deeplab_l_1025")
    cfg.data.autoaugment = "rand_augment"
    with pytest.raises(ConfigError, match="data.autoaugment"):
        validate_config(cfg)
    cfg = load_config("coco/max_deeplab_l_1025")
    cfg.data.small_instance_weight = 0.0
    with pytest.raises(ConfigError, match="data.small_instance_weight"):
        validate_config(cfg)


def test_small_instance_weight_by_hand():
    # 9x9 image, stride 4 -> 3x3. Things (train ids 0, 1): A 4 px, B 20 px, crowd C 6 px; stuff S (id 2) 9 px.
    masks = torch.zeros(4, 9, 9, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True  # A: 4 px < 10 -> weight 3 (covers the stride-4 pixel (0, 0))
    masks[1, 4:9, 4:8] = True  # B: 20 px >= 10 -> 1 (its stride-4 pixels (1, 1), (2, 1))
    masks[2, 0:2, 7:9] = True  # C (crowd): void, never weighted
    masks[3, 8, 0:9] = True  # S: stuff, never weighted
    masks[3, 8, 4:8] = False
    target = {"masks": masks, "labels": torch.tensor([0, 1, 0, 2]),
              "is_crowd": torch.tensor([False, False, True, False]), "void": ~masks.any(0)}
    out = prepare_image_targets(target, 3, stride=4, small_instance_threshold=10, small_instance_weight=3.0,
                                thing_classes=[0, 1])
    expected = torch.ones(3, 3)
    expected[0, 0] = 3.0
    assert torch.equal(out["semantic_weight"], expected)
    out = prepare_image_targets(target, 3, stride=1, small_instance_threshold=21, small_instance_weight=3.0,
                                thing_classes=[0, 1])
    full = torch.ones(9, 9)
    full[masks[0] | masks[1]] = 3.0  # B is small now; crowd C and stuff S still 1
    assert torch.equal(out["semantic_weight"], full)
    assert "semantic_weight" not in prepare_image_targets(target, 3, stride=4)
    with pytest.raises(ValueError, match="needs thing_classes"):
        prepare_image_targets(target, 3, small_instance_threshold=10, small_instance_weight=3.0)
    prepare = make_prepare_batch(3, 4, small_instance_threshold=10, small_instance_weight=3.0, thing_classes=[0, 1])
    _, targets = prepare({"images": torch.zeros(1, 3, 9, 9), "targets": [target]}, torch.device("cpu"))
    assert torch.equal(targets[0]["semantic_weight"], expected)


def test_transform_augments_the_image_and_keeps_the_ids():
    rng = np.random.default_rng(0)
    record = {"image": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
              "panoptic": np.arange(480, dtype=np.int32).reshape(20, 24), "segments": [], "image_id": 0,
              "file_name": "x", "height": 20, "width": 24}
    cfg = load_config("coco/max_deeplab_l_1025").data
    cfg.crop_size, cfg.min_valid_pixels, cfg.flip = (9, 9), -1, False  # AutoAugment draws before the flip
    aug = build_transforms(cfg, is_train=True)
    cfg.autoaugment = ""
    plain = build_transforms(cfg, is_train=True)
    differ = 0
    for seed in range(20):
        a, b = aug(record, np.random.default_rng(seed)), plain(record, np.random.default_rng(seed))
        np.testing.assert_array_equal(a["panoptic"], b["panoptic"])  # same geometry, labels untouched
        differ += int(not np.array_equal(a["image"], b["image"]))
    assert 0 < differ < 20  # P(some operation) = 0.424 per image


def test_small_instance_weight_outside_max_is_refused_in_one_line():
    """Only MaX's criterion reads ``semantic_weight``: a kMaX or K-Net config setting it would
    silently train without it, so validation refuses it naming the option."""
    from kmax_deeplab.config import apply_overrides, get_preset
    from kmax_deeplab.config.validate import validate_config
    from kmax_deeplab.errors import ConfigError

    for preset in ("synthetic/kmax_tiny", "synthetic/knet_tiny"):
        cfg = apply_overrides(get_preset(preset), ["data.small_instance_weight=3.0"])
        with pytest.raises(ConfigError, match=r"data.small_instance_weight=3.0: only MaX-DeepLab"):
            validate_config(cfg)
    validate_config(apply_overrides(get_preset("synthetic/max_deeplab_tiny"), ["data.small_instance_weight=3.0"]))
