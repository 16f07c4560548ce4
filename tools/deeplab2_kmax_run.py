"""Run deeplab2's own kMaX-DeepLab (TensorFlow) on given weights; helper of make_deeplab2_parity.py.

Runs under a TensorFlow venv (not the project's): ``tensorflow-cpu``, ``tf-keras``,
``immutabledict``, ``PyYAML``, ``numpy``, with ``TF_USE_LEGACY_KERAS=1`` and the deeplab2
checkout importable as ``deeplab2`` (``PYTHONPATH=<checkout>/src``, protos compiled); see
the docstring of ``tools/make_deeplab2_parity.py``. Nothing of deeplab2 is copied here:
the model is built from deeplab2's config textproto exactly as its trainer builds it.

Two commands:

``variables CONFIG CROP OUT.json``
    build the model and write the name -> shape list of a checkpoint written the way
    deeplab2's trainer writes it (``tf.train.Checkpoint(**model.checkpoint_items)``).
``run CONFIG CROP WEIGHTS.npz IMAGE.npy OUT.npz``
    restore ``WEIGHTS.npz`` (TF checkpoint names -> arrays; every model variable must be
    given and every array used), feed ``IMAGE.npy`` (``[H, W, 3]`` float32 RGB 0..255),
    and save every stage: encoder endpoints, pixel-decoder stages, per-layer and final
    class / mask logits (aux ones resized to stride 4 by deeplab2's own
    ``_prepare_auxiliary_results``), pixel features, semantic logits, and the panoptic
    result of deeplab2's own ``PostProcessor``. NHWC tensors are written as NCHW.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from deeplab2 import common, config_pb2  # noqa: E402
from deeplab2.data import dataset  # noqa: E402
from deeplab2.model import kmax_deeplab  # noqa: E402

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
SKIP = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "global_step")


def build(config_path: str, crop: int):
    """deeplab2 KMaXDeepLab for COCO from ``config_path`` with a ``crop`` x ``crop`` canvas."""
    with tf.io.gfile.GFile(config_path, "r") as f:
        config = text_format.Parse(f.read(), config_pb2.ExperimentOptions())
    for opts in (config.train_dataset_options, config.eval_dataset_options):
        del opts.crop_size[:]
        opts.crop_size.extend([crop, crop])
    # Area limits scaled from 1281^2 to the small canvas (400 / 6400 px at 1281^2).
    scale = (crop / 1281.0) ** 2
    config.evaluator_options.thing_area_limit = int(round(400 * scale))
    config.evaluator_options.stuff_area_limit = int(round(6400 * scale))
    # Weights come from restore(), not from an ImageNet checkpoint.
    config.model_options.backbone.ClearField("pretrained_weights")
    # One CPU replica: a plain BN (same eval maths as SyncBN, no distribution strategy needed).
    config.trainer_options.solver_options.use_sync_batchnorm = False
    model = kmax_deeplab.KMaXDeepLab(config, dataset.MAP_NAME_TO_DATASET_INFO["coco_panoptic"])
    model(tf.zeros([1, crop, crop, 3]), training=False)
    return model, config


def checkpoint_layout(model) -> dict:
    with tempfile.TemporaryDirectory() as d:
        prefix = tf.train.Checkpoint(global_step=tf.Variable(0, dtype=tf.int64),
                                     **model.checkpoint_items).save(os.path.join(d, "ckpt"))
        return {n: s for n, s in tf.train.list_variables(prefix)}


def _write_named_checkpoint(directory: str, variables: dict) -> str:
    """Write name -> array as a checkpoint whose object-graph paths are the names."""
    tree: dict = {}
    for name, value in variables.items():
        parts = name.split("/")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = tf.Variable(value)

    def module(node):
        if not isinstance(node, dict):
            return node
        m = tf.Module()
        for k, v in node.items():
            setattr(m, k, module(v))
        return m

    return tf.train.Checkpoint(**{k: module(v) for k, v in tree.items()}).save(os.path.join(directory, "ckpt"))


def restore(model, weights: dict) -> None:
    """Restore TF-named arrays into ``model``; every variable given, every array used."""
    layout = {n[: -len(SUFFIX)]: s for n, s in checkpoint_layout(model).items()
              if n.endswith(SUFFIX) and n.split("/")[0] not in SKIP}
    missing = sorted(set(layout) - set(weights))
    extra = sorted(set(weights) - set(layout))
    if missing or extra:
        raise SystemExit(f"weights do not fit the deeplab2 model: {len(missing)} missing {missing[:5]}, "
                         f"{len(extra)} extra {extra[:5]}")
    for n, s in layout.items():
        if tuple(weights[n].shape) != tuple(s):
            raise SystemExit(f"{n}: shape {weights[n].shape} != {s}")
    with tempfile.TemporaryDirectory() as d:
        prefix = _write_named_checkpoint(d, weights)
        status = tf.train.Checkpoint(**model.checkpoint_items).restore(prefix)
        status.assert_consumed()  # every saved value restored into a model variable


def nchw(x) -> np.ndarray:
    x = np.asarray(x)
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def run(config_path: str, crop: int, weights_path: str, image_path: str, out_path: str) -> None:
    model, config = build(config_path, crop)
    weights = dict(np.load(weights_path))
    restore(model, weights)
    image = np.load(image_path).astype(np.float32)[None]
    x = tf.constant(image) / 127.5 - 1.0  # KMaXDeepLab.call's normalisation
    out: dict = {}
    enc = model._pixel_encoder(x, training=False)
    for k in ("stage1", "stage2", "stage3", "stage4", "stage5", "res2", "res3"):
        if k in enc:
            out[f"encoder/{k}"] = nchw(enc[k])
    dec = model._pixel_decoder(enc, training=False)
    for k in ("decoder_stage1", "decoder_stage2", "decoder_stage3", "decoder_output"):
        out[f"pixel_decoder/{k}"] = nchw(dec[k])
    tdec = model._transformer_decoder(dec, training=False)
    pred = model._predictor(tdec, training=False)
    pred = model._prepare_auxiliary_results(dict(pred))  # aux masks -> stride 4, as deeplab2 trains
    for i, aux in enumerate(pred[common.PRED_AUXILIARY_OUTPUTS]):
        out[f"layer{i}/class_logits"] = np.asarray(aux[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY])
        out[f"layer{i}/mask_logits"] = nchw(aux[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY])
    out["final/class_logits"] = np.asarray(pred[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY])
    out["final/mask_logits"] = nchw(pred[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY])
    out["final/pixel_feature"] = nchw(pred[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY])
    out["semantic_logits"] = nchw(pred[common.PRED_SEMANTIC_LOGITS_KEY])
    # deeplab2's own post-processor on the inference outputs (as KMaXDeepLab._inference).
    result = {k: v for k, v in pred.items() if k != common.PRED_AUXILIARY_OUTPUTS}
    post = model._post_processor(result)
    out["panoptic/label_map"] = np.asarray(post[common.PRED_PANOPTIC_KEY])
    ev = config.evaluator_options
    meta = {"crop": crop, "thing_area_limit": ev.thing_area_limit,
            "stuff_area_limit": ev.stuff_area_limit, "tensorflow": tf.__version__}
    np.savez(out_path, **out, meta=np.array(json.dumps(meta)))


def main(argv: list[str]) -> None:
    if argv[:1] == ["variables"] and len(argv) == 4:
        model, _ = build(argv[1], int(argv[2]))
        with open(argv[3], "w") as f:
            json.dump(checkpoint_layout(model), f)
    elif argv[:1] == ["run"] and len(argv) == 6:
        run(argv[1], int(argv[2]), argv[3], argv[4], argv[5])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
