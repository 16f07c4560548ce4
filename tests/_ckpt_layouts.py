"""Shared helpers for the checkpoint tests: realistic layouts from specs/checkpoint_layouts/*.tsv."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch


def read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape from a layout TSV (``name<TAB>[d0, d1]<TAB>dtype?``)."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        dims = parts[1].strip().strip("[]")
        out[parts[0]] = tuple(int(x) for x in dims.split(",") if x.strip())
    return out


def bd_name_to_ours(name: str) -> str:
    """The model contract: BD key -> our key."""
    name = name.replace("sem_seg_head.pixel_decoder.", "pixel_decoder.")
    name = name.replace("sem_seg_head.predictor.", "predictor.")
    return name.replace("_predcitor", "_predictor")


def our_shapes(layouts: Path, backbone: str) -> dict[str, tuple[int, ...]]:
    """Our model's expected keys/shapes: the BD TSV after the contract renames."""
    bd = read_tsv(layouts / f"bytedance_kmax_{backbone}_coco.keys.tsv")
    return {bd_name_to_ours(k): v for k, v in bd.items()}


def random_bd_state(layouts: Path, backbone: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A BD-layout state dict with random values (int64 counters for num_batches_tracked).

    Cached per arguments (generating 70 M numbers is slow on the CI's 2 cores): callers get
    a fresh dict over shared tensors and must not modify tensors in place.
    """
    return dict(_random_bd_state(layouts, backbone, seed))


@functools.lru_cache(maxsize=4)
def _random_bd_state(layouts: Path, backbone: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in read_tsv(layouts / f"bytedance_kmax_{backbone}_coco.keys.tsv").items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        else:
            out[k] = torch.randn(shape, generator=g)
    return out


def random_tf_variables(layouts: Path, backbone: str, seed: int = 0) -> dict[str, np.ndarray]:
    """deeplab2 TF variables (full names) with random float32 values; the object graph is skipped.

    Values are usable for a forward pass: kernels are uniform with variance 1/fan_in
    (fan_in = product of all but the last TF axis), BN ``moving_variance`` lies in
    [0.5, 1.5), everything else is uniform in [-0.5, 0.5).
    """
    rng = np.random.default_rng(seed)
    tf = read_tsv(layouts / f"deeplab2_kmax_{backbone}_coco.variables.tsv")
    return sane_tf_values({k: s for k, s in tf.items()
                           if k.split("/")[0] not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "global_step")},
                          rng)


def sane_tf_values(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """name -> random float32 array per :func:`random_tf_variables`'s rules."""
    out = {}
    for k, s in shapes.items():
        x = rng.random(s, dtype=np.float32) - np.float32(0.5)
        leaf = k.split("/.ATTRIBUTES")[0].rsplit("/", 1)[-1]
        if leaf == "moving_variance":
            x += np.float32(1.0)
        elif "kernel" in leaf and len(s) >= 2:
            x *= np.float32(np.sqrt(12.0 / max(1, int(np.prod(s[:-1])))))
        out[k] = x
    return out


TF_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def write_tf_checkpoint(directory: Path, variables: dict[str, np.ndarray], dtypes: dict | None = None) -> str:
    """Write ``variables`` with ``tf.train.Checkpoint`` so the object-graph names equal the keys.

    Each name ``a/b/c/.ATTRIBUTES/VARIABLE_VALUE`` becomes attribute ``c`` of a tf.Module
    reached by attributes ``a``, ``b`` from the checkpoint root, as deeplab2's trainer does;
    a ``global_step`` is added. Needs TensorFlow (imported here). Returns the prefix.
    """
    import tensorflow as tf

    dtypes = dtypes or {}
    tree: dict = {}
    for name, value in variables.items():
        parts = name[: -len(TF_SUFFIX)].split("/")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = tf.Variable(value, dtype=dtypes.get(name, tf.as_dtype(value.dtype)))

    def build(node):
        if not isinstance(node, dict):
            return node
        m = tf.Module()
        for k, v in node.items():
            setattr(m, k, build(v))
        return m

    root = {k: build(v) for k, v in tree.items()}
    root["global_step"] = tf.Variable(150000, dtype=tf.int64)
    return tf.train.Checkpoint(**root).save(str(Path(directory) / "ckpt"))


def small_model_config(preset: str, size: int = 65):
    """``get_preset(preset)`` with a ``size`` x ``size`` canvas (the weights do not depend on it)."""
    from kmax_deeplab.config import get_preset

    cfg = get_preset(preset)
    cfg.model.image_size = (size, size)
    return cfg


def meta_model_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the real model of ``preset``, built on the meta device (no memory)."""
    from kmax_deeplab.modeling.kmax import build_kmax

    with torch.device("meta"):
        model = build_kmax(small_model_config(preset).model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
