#!/usr/bin/env python
"""Record deeplab2's own MaX-DeepLab loss on small seeded cases (golden for tests/test_max_deeplab_loss.py).

Reference: google-research/deeplab2 @64bc1c1, ``model/loss/max_deeplab_loss.py``
(``MaXDeepLabLoss`` with the loss options of
``configs/coco/max_deeplab/max_deeplab_s_os16_res641_100k.textproto``: PQ-style 3.0, mask-ID
CE 0.3, instance discrimination 1.0, semantic 1.0; instance-discrimination and semantic
sampling off, as MaX uses them), TensorFlow 2.21 CPU.

A toy label space in deeplab2's convention: ids 1, 2 are things, 3, 4 stuff, 0 is the
ignore label (void; COCO crowd regions are void too, ``build_coco_data.py``
``treat_crowd_as_ignore``). Two 8x8 images at the output resolution (the loss's strided
downsampling is then the identity), N = 6 mask slots, max_thing_id 8, D = 8 features;
predictions are seeded numpy arrays. Writes ``tests/data/parity/max_deeplab/deeplab2_max_loss.npz``
with the inputs, the ground truth and deeplab2's per-image loss terms (already weighted).

Run: TF_USE_LEGACY_KERAS=1 PYTHONPATH=/work/refs/deeplab2/src /work/refs/venv-tf/bin/python tools/deeplab2_max_loss.py
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
from google.protobuf import text_format  # noqa: E402

from _max_parity import DATA  # noqa: E402

H = W = 8
N, D, MAX_THING = 6, 8, 8


def ground_truth():
    """semantic [2, 8, 8] (0 = void), thing_id_mask [2, 8, 8] (-1 = none), thing_id_class [2, 8]."""
    sem = np.zeros((2, H, W), np.int32)
    tid = np.full((2, H, W), -1, np.int32)
    tcls = np.full((2, MAX_THING), -1, np.int32)
    # image 0: two things, two stuff, a crowd strip (void) and an unlabelled pixel column
    sem[0, 0:3, 0:4] = 1; tid[0, 0:3, 0:4] = 0; tcls[0, 0] = 1
    sem[0, 0:3, 4:8] = 2; tid[0, 0:3, 4:8] = 1; tcls[0, 1] = 2
    sem[0, 3:6, :] = 3
    sem[0, 6:8, 0:6] = 4
    sem[0, 6:8, 6] = 0  # crowd of class 1 -> ignore label
    sem[0, 6:8, 7] = 0  # unlabelled
    # image 1: one thing of class 2 (two parts of class 1 too small? no: one more thing), stuff 4, void row
    sem[1, :, :] = 4
    sem[1, 2:6, 2:6] = 2; tid[1, 2:6, 2:6] = 0; tcls[1, 0] = 2
    sem[1, 0:2, 6:8] = 1; tid[1, 0:2, 6:8] = 1; tcls[1, 1] = 1
    sem[1, 7, :] = 0
    return sem, tid, tcls


def predictions(seed: int):
    rng = np.random.default_rng(seed)
    feat = rng.standard_normal((2, H, W, D)).astype(np.float32)
    feat /= np.linalg.norm(feat, axis=-1, keepdims=True)
    masks = (2.0 * rng.standard_normal((2, H, W, N))).astype(np.float32)
    classes = (1.5 * rng.standard_normal((2, N, 5))).astype(np.float32)
    semantic = rng.standard_normal((2, H, W, 5)).astype(np.float32)
    return feat, masks, classes, semantic


def main() -> None:
    from deeplab2 import common, config_pb2
    from deeplab2.model.loss import max_deeplab_loss

    cfg_path = (Path("/work/refs/deeplab2/src/deeplab2/configs/coco/max_deeplab")
                / "max_deeplab_s_os16_res641_100k.textproto")
    config = text_format.Parse(cfg_path.read_text(), config_pb2.ExperimentOptions())
    loss = max_deeplab_loss.MaXDeepLabLoss(config.trainer_options.loss_options, num_classes=5, ignore_label=0,
                                           thing_class_ids=(1, 2))
    sem, tid, tcls = ground_truth()
    record = {"gt_semantic": sem, "gt_thing_id_mask": tid, "gt_thing_id_class": tcls}
    for seed in (0, 1, 2):
        feat, masks, classes, semantic = predictions(seed)
        y_true = {common.GT_SEMANTIC_KEY: tf.constant(sem), common.GT_THING_ID_MASK_KEY: tf.constant(tid),
                  common.GT_THING_ID_CLASS_KEY: tf.constant(tcls),
                  common.SEMANTIC_LOSS_WEIGHT_KEY: tf.ones((2, H, W), tf.float32)}
        y_pred = {common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY: tf.constant(feat),
                  common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: tf.constant(masks),
                  common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: tf.constant(classes),
                  common.PRED_SEMANTIC_LOGITS_KEY: tf.constant(semantic)}
        out = loss((y_true, y_pred))
        for k, v in out.items():
            record[f"seed{seed}/{k}"] = v.numpy()
            print(seed, k, v.numpy())
        record.update({f"seed{seed}/feature": feat, f"seed{seed}/mask_logits": masks,
                       f"seed{seed}/class_logits": classes, f"seed{seed}/semantic_logits": semantic})
    np.savez_compressed(DATA / "deeplab2_max_loss.npz", **record)
    print("wrote", DATA / "deeplab2_max_loss.npz")


if __name__ == "__main__":
    main()
