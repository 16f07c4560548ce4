"""Reusable layers shared by every model family: norms, drop path, conv wrappers, attention."""

from kmax_deeplab.modeling.layers.axial_attention import (
    AxialAttention1d,
    AxialAttention2d,
    RelativePositionalEncoding,
)
from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct, ConvNormAct1d, get_activation, trunc_normal_
from kmax_deeplab.modeling.layers.drop_path import DropPath, drop_path
from kmax_deeplab.modeling.layers.norm import (
    BN_EPS,
    BN_MOMENTUM,
    LN_EPS,
    LayerNorm2d,
    LayerNormFP32,
    frozen_affine,
    get_norm,
)

__all__ = [
    "AxialAttention1d",
    "AxialAttention2d",
    "ConvNormAct",
    "ConvNormAct1d",
    "RelativePositionalEncoding",
    "get_activation",
    "trunc_normal_",
    "BN_EPS",
    "BN_MOMENTUM",
    "LN_EPS",
    "DropPath",
    "LayerNorm2d",
    "LayerNormFP32",
    "drop_path",
    "frozen_affine",
    "get_norm",
]
