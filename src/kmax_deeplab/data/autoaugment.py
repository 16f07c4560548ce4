"""deeplab2's AutoAugment "simple classification policy" (MaX-DeepLab-L's recipe, spec ``max_deeplab.md`` §5).

Our implementation of deeplab2 @64bc1c1 ``data/preprocessing/autoaugment_policy.py`` and
``autoaugment_utils.py`` (itself the TF-models/EfficientDet port of PIL's ImageOps and
ImageEnhance), on uint8 ``[H, W, 3]`` numpy images. Every operation is photometric, so the
panoptic label is unchanged (deeplab2's ``label_wrapper``). The definitions are deeplab2's,
including its quirks:

* ``Contrast`` blends with a grey image of value ``#pixels / 256`` (clipped to 255), not
  the mean intensity: deeplab2 sums the histogram *counts* and divides by 256;
* ``blend`` truncates towards zero (TF ``cast``) and clips only when extrapolating;
* ``Sharpness`` keeps the original border pixels (VALID 3x3 smoothing, re-padded).

:data:`SIMPLE_CLASSIFICATION_POLICY` is deeplab2's number list, decoded by
:func:`convert_policy` exactly as deeplab2 decodes it (5 sub-policies of 2 operations);
``coco/max_deeplab_l_1025`` uses it with magnitude scale 1 (``"simple_classification_policy"``),
the Cityscapes axial configs with 0.2. Per image one sub-policy is drawn uniformly, then each
of its operations is applied with its probability.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["AUGMENTATION_OPERATIONS", "AutoAugment", "POLICIES", "SIMPLE_CLASSIFICATION_POLICY", "apply_operation",
           "convert_policy", "OPERATIONS"]

#: deeplab2 ``augmentation_reduced_operations`` (index = the policy's operation id).
AUGMENTATION_OPERATIONS = ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "Color", "Contrast",
                           "Brightness", "Sharpness")
_PROBABILITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_MAX_LEVEL = 10.0
#: deeplab2 ``simple_classification_policy``: (operation id, probability id, magnitude) x 2 per sub-policy.
SIMPLE_CLASSIFICATION_POLICY = (8, 2, 7, 7, 1, 10,
                                1, 0, 9, 6, 1, 10,
                                8, 1, 9, 5, 1, 9,
                                4, 1, 7, 1, 3, 9,
                                8, 1, 1, 1, 1, 7)


def convert_policy(policy: Sequence[int] = SIMPLE_CLASSIFICATION_POLICY, magnitude_scale: float = 1.0,
                   probability_scale: float = 1.0) -> list[list[tuple[str, float, float]]]:
    """deeplab2 ``convert_policy``: the number list -> sub-policies of ``(name, probability, magnitude)``.

    Raises:
        ValueError: the list length is not a multiple of 6.
    """
    if len(policy) % 6:
        raise ValueError(f"AutoAugment policy length must be a multiple of 6, got {len(policy)}")
    out = []
    for n in range(len(policy) // 6):
        sub = []
        for i in range(2):
            op, prob, magnitude = policy[6 * n + 3 * i: 6 * n + 3 * i + 3]
            sub.append((AUGMENTATION_OPERATIONS[op], _PROBABILITIES[prob] * probability_scale,
                        magnitude * magnitude_scale))
        out.append(sub)
    return out


#: deeplab2 ``available_policies``.
POLICIES = {
    "simple_classification_policy": convert_policy(SIMPLE_CLASSIFICATION_POLICY, 1),
    "simple_classification_policy_magnitude_scale_0.2": convert_policy(SIMPLE_CLASSIFICATION_POLICY, 0.2),
}


def _blend(image1: np.ndarray, image2: np.ndarray, factor: float) -> np.ndarray:
    """deeplab2 ``blend``: ``image1 + factor (image2 - image1)`` in float32, truncated; clipped when extrapolating."""
    if factor == 0.0:
        return image1
    if factor == 1.0:
        return image2
    a, b = image1.astype(np.float32), image2.astype(np.float32)
    temp = a + np.float32(factor) * (b - a)
    if 0.0 < factor < 1.0:
        return temp.astype(np.uint8)
    return np.clip(temp, 0.0, 255.0).astype(np.uint8)


def _grayscale(image: np.ndarray) -> np.ndarray:
    """TF ``rgb_to_grayscale`` of uint8: to float in [0, 1], weights (0.2989, 0.587, 0.114), back x 255.5 truncated."""
    f = image.astype(np.float32) / np.float32(255.0)
    gray = f @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    return (gray * np.float32(255.5)).astype(np.uint8)[..., None]  # TF convert_image_dtype(float -> uint8)


def _histogram(channel: np.ndarray) -> np.ndarray:
    """TF ``histogram_fixed_width(x, [0, 255], nbins=256)`` of integers 0..255 (bin = value)."""
    return np.bincount(channel.ravel().astype(np.int64), minlength=256)[:256]


def autocontrast(image: np.ndarray) -> np.ndarray:
    """Per channel: stretch [min, max] to [0, 255] (unchanged when flat)."""
    out = image.copy()
    for c in range(3):
        ch = image[..., c]
        lo, hi = np.float32(ch.min()), np.float32(ch.max())
        if hi > lo:
            scale = np.float32(255.0) / (hi - lo)
            out[..., c] = np.clip(ch.astype(np.float32) * scale + (-lo * scale), 0.0, 255.0).astype(np.uint8)
    return out


def equalize(image: np.ndarray) -> np.ndarray:
    """Per channel histogram equalisation (PIL ``ImageOps.equalize`` as deeplab2 writes it)."""
    out = image.copy()
    for c in range(3):
        ch = image[..., c].astype(np.int64)
        histo = _histogram(ch)
        nonzero = histo[histo != 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255
        if step == 0:
            continue
        lut = (np.cumsum(histo) + step // 2) // step
        lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255)
        out[..., c] = lut[ch].astype(np.uint8)
    return out


def invert(image: np.ndarray) -> np.ndarray:
    return 255 - image


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """Keep the ``bits`` high bits of each value."""
    shift = 8 - bits
    return ((image >> shift) << shift).astype(np.uint8)


def solarize(image: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Invert the values >= ``threshold``."""
    return np.where(image < threshold, image, 255 - image).astype(np.uint8)


def color(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL ``ImageEnhance.Color``: blend with the grey version."""
    return _blend(np.repeat(_grayscale(image), 3, axis=-1), image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """deeplab2's Contrast: blend with a flat grey of value ``min(#pixels / 256, 255)`` (see module docstring)."""
    hist = _histogram(_grayscale(image)[..., 0])
    mean = np.float32(hist.sum()) / np.float32(256.0)
    degenerate = np.full(image.shape, np.clip(mean, 0.0, 255.0), np.float32).astype(np.uint8)
    return _blend(degenerate, image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL ``ImageEnhance.Brightness``: blend with black."""
    return _blend(np.zeros_like(image), image, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL ``ImageEnhance.Sharpness``: blend with the 3x3 ``[[1,1,1],[1,5,1],[1,1,1]]/13`` smoothing (border kept)."""
    f = image.astype(np.float32)
    h, w = image.shape[:2]
    if h < 3 or w < 3:
        return _blend(image, image, factor)
    k = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13.0)
    # TF's depthwise conv accumulates in float32 with fused multiply-adds, taps in row-major
    # order: the float32 x float32 product is exact in float64, one rounding per tap.
    acc = np.zeros((h - 2, w - 2, 3), np.float32)
    for dy in range(3):
        for dx in range(3):
            acc = (acc.astype(np.float64) + np.float64(k[dy, dx]) * f[dy:dy + h - 2, dx:dx + w - 2]).astype(np.float32)
    degenerate = image.copy()
    degenerate[1:-1, 1:-1] = np.clip(acc, 0.0, 255.0).astype(np.uint8)
    return _blend(degenerate, image, factor)


def _enhance(level: float) -> tuple[float]:
    return ((level / _MAX_LEVEL) * 1.8 + 0.1,)


#: name -> (function, level -> arguments), deeplab2 ``NAME_TO_FUNC`` / ``level_to_arg``.
OPERATIONS: dict[str, tuple[Callable[..., np.ndarray], Callable[[float], tuple]]] = {
    "AutoContrast": (autocontrast, lambda level: ()),
    "Equalize": (equalize, lambda level: ()),
    "Invert": (invert, lambda level: ()),
    "Posterize": (posterize, lambda level: (int((level / _MAX_LEVEL) * 4),)),
    "Solarize": (solarize, lambda level: (int((level / _MAX_LEVEL) * 256),)),
    "Color": (color, _enhance),
    "Contrast": (contrast, _enhance),
    "Brightness": (brightness, _enhance),
    "Sharpness": (sharpness, _enhance),
}


def apply_operation(image: np.ndarray, name: str, magnitude: float) -> np.ndarray:
    """One operation of :data:`OPERATIONS` at a policy magnitude (level), on a uint8 ``[H, W, 3]`` image."""
    func, to_args = OPERATIONS[name]
    return func(image, *to_args(magnitude))


class AutoAugment:
    """deeplab2's AutoAugment as a photometric transform ``(image, rng) -> image``.

    One sub-policy is drawn uniformly; each operation is applied with its probability
    (deeplab2 ``select_and_apply_random_policy`` / ``_apply_func_with_prob``). A float image
    is truncated to uint8 first and returned as float32, as deeplab2's ``_autoaugment_helper``
    casts ``float32 -> uint8 -> float32``.

    Args:
        policy_name: a key of :data:`POLICIES`.

    Raises:
        ValueError: unknown policy (the message lists them).
    """

    def __init__(self, policy_name: str = "simple_classification_policy") -> None:
        if policy_name not in POLICIES:
            raise ValueError(f"data.autoaugment: unknown AutoAugment policy {policy_name!r}; "
                             f"available: {', '.join(sorted(POLICIES))}")
        self.policy_name = policy_name
        self.policy = POLICIES[policy_name]

    def __repr__(self) -> str:
        return f"AutoAugment({self.policy_name!r})"

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"AutoAugment: expected an [H, W, 3] RGB image, got shape {image.shape}")
        is_float = image.dtype != np.uint8
        img = np.clip(image, 0, 255).astype(np.uint8) if is_float else image
        sub = self.policy[int(rng.integers(0, len(self.policy)))]
        for name, prob, magnitude in sub:
            if rng.random() < prob:
                img = apply_operation(img, name, magnitude)
        return img.astype(np.float32) if is_float else img
