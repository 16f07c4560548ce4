#!/usr/bin/env python
"""Write a MaX-DeepLab ImageNet-initialisation checkpoint with deeplab2's own backbone encoder.

Reference: google-research/deeplab2 @64bc1c1, TensorFlow 2.21 CPU. The published initial
checkpoints (``g3doc/projects/imagenet_pretrained_checkpoints.md``:
``max_deeplab_s_backbone_imagenet1k_strong_training_strategy`` and
``max_deeplab_l_backbone_imagenet1k_strong_training_strategy``) hold deeplab2's
``max_deeplab_{s,l}_backbone`` encoder (``model/encoder/axial_resnet_instances.py``:
``classification_mode=True``, ``backbone_use_transformer_beyond_stride=0``, so no
dual-path transformers, no memory, no ``*_extra`` stages). The trainer restores it with
``trainer/runner_utils.maybe_load_checkpoint``: ``tf.train.Checkpoint(**model.checkpoint_items)
.read(init).expect_partial()`` (or, for a TF Model Garden file, the same under
``backbone/_encoder/``), so only the ``encoder/...`` entries whose object paths exist in the
panoptic model are restored and everything else keeps its initialisation.

This tool builds that backbone encoder (crop 129, MaX-S/L COCO backbone options), writes
``tests/data/parity/max_deeplab/deeplab2_max_<v>_backbone.layout.tsv`` (name and shape of
every entry of ``tf.train.Checkpoint(encoder=backbone)``), and, with ``--workdir``, writes
that checkpoint with the seeded values ``tests/_max_parity.py:seeded_value`` and restores it
with deeplab2's own ``maybe_load_checkpoint`` into the panoptic model built from the COCO
config, recording in the layout header how many model variables deeplab2 restored
(all of them must equal the seeded values of the same names) and how many it left.

Run: TF_USE_LEGACY_KERAS=1 PYTHONPATH=/work/refs/deeplab2/src /work/refs/venv-tf/bin/python \
    tools/deeplab2_max_init.py --variant s --workdir /tmp/max_init
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _max_parity import DATA, SUFFIX, seeded_value  # noqa: E402


def entries(root: tf.train.Checkpoint, variables, tmp: Path) -> dict[str, tf.Variable]:
    """Checkpoint key (suffix stripped) -> variable, matched by unique random values."""
    rng = np.random.default_rng(54321)
    by_hash = {}
    for v in variables:
        v.assign(rng.standard_normal(v.shape).astype(v.dtype.as_numpy_dtype))
        by_hash[hashlib.sha1(v.numpy().tobytes()).hexdigest()] = v
    reader = tf.train.load_checkpoint(root.write(str(tmp / "probe")))
    out = {}
    for key in reader.get_variable_to_shape_map():
        if key.endswith(SUFFIX):
            out[key[:-len(SUFFIX)]] = by_hash[hashlib.sha1(reader.get_tensor(key).tobytes()).hexdigest()]
    if len(out) != len(variables):
        raise RuntimeError(f"{len(out)} entries for {len(variables)} variables")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="s", choices=("s", "l"))
    ap.add_argument("--crop", type=int, default=129)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    from deeplab2.model import builder
    from deeplab2.trainer import runner_utils
    from deeplab2_max_parity import build

    model, config = build(Path("/work/refs/deeplab2/src"), args.crop, args.variant)
    opts = config.trainer_options.solver_options
    bn = functools.partial(tf.keras.layers.BatchNormalization, momentum=opts.batchnorm_momentum,
                           epsilon=opts.batchnorm_epsilon)
    backbone_options = type(config.model_options.backbone)()
    backbone_options.CopyFrom(config.model_options.backbone)
    backbone_options.name = f"max_deeplab_{args.variant}_backbone"
    backbone = builder.create_encoder(backbone_options, bn)
    image = tf.zeros([1, args.crop, args.crop, 3])
    backbone(image, training=False)
    model(image, training=False)

    keys = entries(tf.train.Checkpoint(encoder=backbone), backbone.variables, args.workdir)
    full = entries(tf.train.Checkpoint(**model.checkpoint_items), model.variables, args.workdir)
    for k, v in keys.items():
        v.assign(seeded_value(k, tuple(v.shape), args.seed))
    init = tf.train.Checkpoint(encoder=backbone).write(str(args.workdir / f"max_{args.variant}_backbone_init"))
    print("backbone checkpoint:", init, len(keys), "entries,",
          f"{sum(int(np.prod(v.shape)) for v in backbone.trainable_variables):,} trainable parameters")

    before = {k: v.numpy().copy() for k, v in full.items()}
    runner_utils.maybe_load_checkpoint(init, model.checkpoint_items)
    restored = sorted(k for k, v in full.items() if not np.array_equal(v.numpy(), before[k]))
    for k in restored:
        np.testing.assert_array_equal(full[k].numpy(), seeded_value(k, tuple(full[k].shape), args.seed))
    if set(restored) != set(keys):
        raise RuntimeError(f"deeplab2 restored {len(restored)} entries, the backbone has {len(keys)}: "
                           f"{sorted(set(restored) ^ set(keys))[:10]}")
    left = len(full) - len(restored)
    print(f"deeplab2 restored {len(restored)} of {len(full)} model entries; left {left} at init")

    layout = sorted((k, tuple(v.shape)) for k, v in keys.items())
    out = DATA / f"deeplab2_max_{args.variant}_backbone.layout.tsv"
    with open(out, "w") as f:
        f.write(f"# deeplab2 @64bc1c1 max_deeplab_{args.variant}_backbone: tf.train.Checkpoint(encoder=...) entries "
                f"(tools/deeplab2_max_init.py); maybe_load_checkpoint restores all {len(restored)} into the "
                f"COCO model and leaves {left} of its {len(full)} entries at init\n")
        for k, shape in layout:
            f.write(f"{k}\t{','.join(str(s) for s in shape)}\n")
    print("wrote", out)
