"""The backbone contract: geometry declared up front, features returned by name (STYLE.md §2).

Every backbone is an ``nn.Module`` that

* lists its outputs in ``feature_info``, a list of frozen :class:`FeatureSpec`
  ``(name, channels, stride)`` for ``"stem"``, ``"res2"``, ``"res3"``, ``"res4"``, ``"res5"``;
* maps an already-normalised image ``[B, 3, H, W]`` to ``dict[str, Tensor]`` with exactly
  those keys, where the feature called ``name`` has shape
  ``[B, channels, ceil(H / stride), ceil(W / stride)]`` (for the kMaX sizes ``H = 32k + 1``
  this is ``(H - 1) / stride + 1``, spec §1).

Decoders read channels and strides from ``feature_info``; they never hard-code them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

FEATURE_NAMES: tuple[str, ...] = ("stem", "res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class FeatureSpec:
    """Geometry of one backbone output.

    Attributes:
        name: ``"stem"``, ``"res2"``, ``"res3"``, ``"res4"`` or ``"res5"``.
        channels: D, channels of the feature map.
        stride: input pixels per feature pixel (2, 4, 8, 16 or 32).
    """

    name: str
    channels: int
    stride: int

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size ``(ceil(H / stride), ceil(W / stride))`` of this feature for an input."""
        return math.ceil(height / self.stride), math.ceil(width / self.stride)


class Backbone(nn.Module):
    """Base class of every backbone: holds ``feature_info`` and checks inputs.

    Subclasses set ``self.feature_info`` in ``__init__`` and implement ``forward``.
    """

    feature_info: list[FeatureSpec]

    def feature_spec(self, name: str) -> FeatureSpec:
        """The :class:`FeatureSpec` called ``name``.

        Raises:
            KeyError: ``name`` is not an output of this backbone.
        """
        for spec in self.feature_info:
            if spec.name == name:
                return spec
        raise KeyError(f"{type(self).__name__} has no feature {name!r}; "
                       f"it has {[s.name for s in self.feature_info]}")

    def _check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a ``[B, 3, H, W]`` floating-point batch."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects an image batch [B, 3, H, W], "
                             f"got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point input, "
                             f"got {x.dtype}")


def check_feature_info(feature_info: list[FeatureSpec]) -> list[FeatureSpec]:
    """Validate a backbone's geometry: all five names in order, strides never shrinking.

    Raises:
        ValueError: names differ from :data:`FEATURE_NAMES` or a stride decreases.
    """
    names = tuple(s.name for s in feature_info)
    if names != FEATURE_NAMES:
        raise ValueError(f"feature_info names must be {FEATURE_NAMES}, got {names}")
    strides = [s.stride for s in feature_info]
    if any(b < a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"feature_info strides must not decrease, got {strides}")
    return list(feature_info)


__all__ = ["FEATURE_NAMES", "Backbone", "FeatureSpec", "check_feature_info"]
