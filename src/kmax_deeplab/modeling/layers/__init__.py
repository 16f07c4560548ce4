"""Reusable layers shared by every model family: norms, drop path, conv wrappers, attention."""

from kmax_deeplab.modeling.layers.drop_path import DropPath, drop_path
from kmax_deeplab.modeling.layers.norm import (
    BN_EPS,
    BN_MOMENTUM,
    LN_EPS,
    LayerNorm2d,
    LayerNormFP32,
    get_norm,
)

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "LN_EPS",
    "DropPath",
    "LayerNorm2d",
    "LayerNormFP32",
    "drop_path",
    "get_norm",
]
