#!/usr/bin/env python
"""Run deeplab2's own MaX-DeepLab-S with seeded weights; write its checkpoint and the golden record.

Reference: google-research/deeplab2 @64bc1c1 (2023-04-17), TensorFlow 2.21 CPU, built from
``configs/coco/max_deeplab/max_deeplab_s_os16_res641_100k.textproto`` with the crop set
to ``--crop`` (129: stride-16 maps of 9x9, well inside the 509-row position tables and
the 129-query axial block) and plain (unsynchronised) BN.

What it writes:

* ``tests/data/parity/max_deeplab/deeplab2_max_s_<crop>.layout.tsv``: every checkpoint
  entry (name without ``/.ATTRIBUTES/VARIABLE_VALUE``, shape) of
  ``tf.train.Checkpoint(**model.checkpoint_items)``;
* ``tests/data/parity/max_deeplab/deeplab2_max_s_<crop>_seed<seed>.npz``: the golden
  subset (``tests/_max_parity.py:golden_of``) of deeplab2's eval-mode outputs for the
  weights ``tests/_max_parity.py:seeded_variables(layout, seed)`` on
  ``seeded_image(crop, crop, seed)``: encoder stages, memory class / mask features,
  decoder feature, class logits, mask logits, normalised pixel feature, semantic logits;
* ``--workdir``: a real deeplab2 checkpoint of those weights (``tf.train.Checkpoint(
  global_step=..., **model.checkpoint_items)`` + ``CheckpointManager``, the released
  archives' layout without optimizer slots) and the full outputs (``tf_outputs.npz``),
  for ``kmax convert --from deeplab2`` and a full-size comparison.

Run (outside the repo's venv; deeplab2 with compiled protos on PYTHONPATH):

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=/work/refs/deeplab2/src \
      /work/refs/venv-tf/bin/python tools/deeplab2_max_parity.py --workdir /tmp/max_parity

Then ``pytest tests/test_max_deeplab_parity.py`` checks our model against the record.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from _max_parity import DATA, SUFFIX, golden_of, seeded_image, seeded_value  # noqa: E402

ENDPOINTS = ("stage1", "stage2", "stage3", "stage4", "stage5", "feature_panoptic", "feature_semantic",
             "transformer_class_feature", "transformer_mask_feature")
HEADS = ("transformer_class_logits", "pixel_space_mask_logits", "pixel_space_normalized_feature",
         "semantic_logits")


def build(deeplab2_root: Path, crop: int, variant: str):
    from deeplab2 import config_pb2
    from deeplab2.data import dataset
    from deeplab2.model import deeplab

    name = {"s": "max_deeplab_s_os16_res641_100k", "l": "max_deeplab_l_os16_res1025_100k"}[variant]
    path = deeplab2_root / "deeplab2" / "configs" / "coco" / "max_deeplab" / f"{name}.textproto"
    config = text_format.Parse(path.read_text(), config_pb2.ExperimentOptions())
    for opts in (config.train_dataset_options, config.eval_dataset_options):
        del opts.crop_size[:]
        opts.crop_size.extend([crop, crop])
    config.trainer_options.solver_options.use_sync_batchnorm = False
    return deeplab.DeepLab(config, dataset.COCO_PANOPTIC_INFORMATION), config


def checkpoint_keys(model, tmp: Path) -> dict[str, tf.Variable]:
    """Checkpoint key (suffix stripped) -> model variable, matched by unique random values."""
    rng = np.random.default_rng(12345)
    by_hash = {}
    for v in model.variables:
        v.assign(rng.standard_normal(v.shape).astype(v.dtype.as_numpy_dtype))
        by_hash[hashlib.sha1(v.numpy().tobytes()).hexdigest()] = v
    if len(by_hash) != len(model.variables):
        raise RuntimeError("random values collided")
    prefix = tf.train.Checkpoint(**model.checkpoint_items).write(str(tmp / "probe"))
    reader = tf.train.load_checkpoint(prefix)
    out = {}
    for key in reader.get_variable_to_shape_map():
        if not key.endswith(SUFFIX):
            continue
        h = hashlib.sha1(reader.get_tensor(key).tobytes()).hexdigest()
        out[key[:-len(SUFFIX)]] = by_hash[h]
    if len(out) != len(model.variables):
        raise RuntimeError(f"{len(out)} checkpoint entries for {len(model.variables)} variables")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deeplab2", type=Path, default=Path("/work/refs/deeplab2/src"))
    ap.add_argument("--crop", type=int, default=129)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="s", choices=("s",))
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--no-golden", action="store_true", help="do not touch tests/data")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tf.random.set_seed(args.seed)

    model, _ = build(args.deeplab2, args.crop, args.variant)
    image = tf.constant(seeded_image(args.crop, args.crop, args.seed)[None])
    model(image, training=False)  # builds every layer
    keys = checkpoint_keys(model, args.workdir)
    layout = sorted((k, tuple(v.shape)) for k, v in keys.items())
    for k, v in keys.items():
        v.assign(seeded_value(k, tuple(v.shape), args.seed))
    n_train = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    print(f"{len(layout)} checkpoint entries, {n_train:,} trainable parameters")

    ckpt = tf.train.Checkpoint(global_step=tf.Variable(1000, dtype=tf.int64), **model.checkpoint_items)
    saved = tf.train.CheckpointManager(ckpt, str(args.workdir / "ckpt"), max_to_keep=1).save(checkpoint_number=1000)
    print("checkpoint:", saved)

    x = image / 127.5 - 1.0
    endpoints = model._encoder(x, training=False)
    heads = model._decoder(endpoints, training=False)
    full = {k: endpoints[k].numpy() for k in ENDPOINTS}
    full.update({k: heads[k].numpy() for k in HEADS})
    result = model(image, training=False)  # the whole eval path, post-processing included
    for k in ("panoptic_pred", "semantic_pred", "instance_pred"):
        if k in result:
            full["post_" + k] = result[k].numpy()
    full["image"] = image.numpy()
    np.savez(args.workdir / "tf_outputs.npz", **full)
    for k, v in full.items():
        print(f"  {k:34s} {str(v.shape):22s} max|x| {np.abs(v).max():.4g}")

    if not args.no_golden:
        DATA.mkdir(parents=True, exist_ok=True)
        stem = f"deeplab2_max_{args.variant}_{args.crop}"
        with open(DATA / f"{stem}.layout.tsv", "w") as f:
            f.write(f"# deeplab2 @64bc1c1 MaX-DeepLab-{args.variant.upper()} checkpoint entries at crop "
                    f"{args.crop} (tools/deeplab2_max_parity.py)\n")
            for k, shape in layout:
                f.write(f"{k}\t{','.join(str(s) for s in shape)}\n")
        np.savez_compressed(DATA / f"{stem}_seed{args.seed}.npz", **golden_of(full))
        print("golden:", DATA / f"{stem}_seed{args.seed}.npz")


if __name__ == "__main__":
    main()
