"""Seeded deeplab2-layout MaX-DeepLab weights, shared by the parity test and its tool.

numpy only (no TensorFlow, no torch): ``tools/deeplab2_max_parity.py`` assigns these
values to deeplab2's own model (TF venv) and records its outputs; the test regenerates
the same values from the committed layout (name + shape per checkpoint entry), converts
them with our deeplab2 converter and compares our model's outputs with the record.

Every tensor is drawn from its own generator seeded by (seed, crc32(name)), so the values
do not depend on the order of the layout. Scales keep a seeded network in a useful range
without a calibration pass: kernels N(0, 1/fan_in)·gain, BN γ U(0.4, 1.0) (non-zero, so a
swapped γ/β or a dropped residual branch shows), β, moving mean and biases std 0.1,
moving variance U(0.5, 1.5), position tables std 0.5, memory std 1.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
DATA = Path(__file__).parent / "data" / "parity" / "max_deeplab"


def read_layout(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """``name<TAB>d0,d1,..`` lines -> [(name, shape)]."""
    out = []
    for line in Path(path).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape = line.split("\t")
        out.append((name, tuple(int(s) for s in shape.split(",") if s)))
    return out


def seeded_value(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The seeded float32 value of one checkpoint entry (see module docstring)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    leaf = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    last = leaf.rsplit("/", 1)[-1]

    def uniform(lo: float, hi: float) -> np.ndarray:
        return rng.random(shape, dtype=np.float32) * np.float32(hi - lo) + np.float32(lo)

    def normal(std: float) -> np.ndarray:  # zero mean, this std; uniform because it is 2x faster to draw
        return uniform(-std * 3 ** 0.5, std * 3 ** 0.5)

    if last == "gamma":
        x = uniform(0.4, 1.0)
    elif last in ("beta", "moving_mean", "bias"):
        x = normal(0.1)
    elif last == "moving_variance":
        x = uniform(0.5, 1.5)
    elif last == "embeddings":
        x = normal(0.5)
    elif last == "memory_feature":
        x = normal(1.0)
    else:  # kernels: conv [kh, kw, in, out], depthwise [kh, kw, C, 1], conv1d [1, in, out], qkv [in, out]
        fan_in = shape[0] * shape[1] if last == "depthwise_kernel" else int(np.prod(shape[:-1]))
        x = normal(1.0 / np.sqrt(max(fan_in, 1)))
    return x.astype(np.float32)


def seeded_variables(layout, seed: int) -> dict[str, np.ndarray]:
    """name -> seeded value for every (name, shape) of ``layout``."""
    return {name: seeded_value(name, shape, seed) for name, shape in layout}


def seeded_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth-plus-noise RGB image ``[H, W, 3]`` float32 in 0..255 (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    base = np.stack([128 + 100 * np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.float32)


#: What the golden record keeps of each deeplab2 output (NHWC / [B, N, C], batch 1), as
#: (slices over the non-batch axes). Small enough to commit, spread over every channel
#: group and position.
GOLDEN_SLICES = {
    "stage1": (slice(None, None, 8), slice(None, None, 8), slice(None, None, 8)),
    "stage2": (slice(None, None, 4), slice(None, None, 4), slice(None, None, 8)),
    "stage3": (slice(None, None, 2), slice(None, None, 2), slice(None, None, 16)),
    "stage4": (slice(None), slice(None), slice(None, None, 32)),
    "stage5": (slice(None), slice(None), slice(None, None, 64)),
    "feature_panoptic": (slice(None, None, 4), slice(None, None, 4), slice(None, None, 8)),
    "transformer_class_feature": (slice(None, None, 2), slice(None, None, 8)),
    "transformer_mask_feature": (slice(None, None, 2), slice(None, None, 8)),
    "transformer_class_logits": (slice(None, None, 4), slice(None)),
    "pixel_space_mask_logits": (slice(None, None, 4), slice(None, None, 4), slice(None)),
    "pixel_space_normalized_feature": (slice(None, None, 4), slice(None, None, 4), slice(None, None, 4)),
    "semantic_logits": (slice(None, None, 4), slice(None, None, 4), slice(None, None, 4)),
}


def golden_of(outputs: dict) -> dict[str, np.ndarray]:
    """The committed subset of full NHWC outputs (plus full argmaxes of masks and classes)."""
    out = {k: np.ascontiguousarray(np.asarray(outputs[k])[0][GOLDEN_SLICES[k]]).astype(np.float32)
           for k in GOLDEN_SLICES}
    out["mask_argmax"] = np.asarray(outputs["pixel_space_mask_logits"])[0].argmax(-1).astype(np.int16)
    out["class_argmax"] = np.asarray(outputs["transformer_class_logits"])[0].argmax(-1).astype(np.int16)
    return out
