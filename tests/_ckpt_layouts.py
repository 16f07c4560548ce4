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
    """deeplab2 TF variables (full names) with random float32 values; the object graph is skipped."""
    rng = np.random.default_rng(seed)
    tf = read_tsv(layouts / f"deeplab2_kmax_{backbone}_coco.variables.tsv")
    return {k: rng.random(s, dtype=np.float32) - 0.5 for k, s in tf.items()
            if k.split("/")[0] not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "global_step")}
