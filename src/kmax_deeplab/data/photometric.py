"""Photometric (colour) augmentation of the training image; targets are never touched (spec §4).

bytedance (BD) kMaX-DeepLab trains with the SSD colour jitter of detectron2's PointRend
project (``ColorAugSSDTransform``, inserted after the scale jitter in BD's
``build_transform_gen``), with its default ranges:

1. brightness: with probability 0.5 add ``beta ~ U(-32, 32)``;
2. with probability 0.5 the order is (contrast, saturation, hue), else (saturation, hue,
   contrast);
3. contrast: with probability 0.5 multiply by ``alpha ~ U(0.5, 1.5)``;
4. saturation: with probability 0.5 multiply the 8-bit HSV saturation by ``U(0.5, 1.5)``;
5. hue: with probability 0.5 add an integer ``d ~ U{-18..18}`` to the 8-bit HSV hue
   (OpenCV convention, hue in ``[0, 180)``, i.e. 2 degrees per step), modulo 180.

Brightness and contrast work on 8-bit values: the result is clipped to 0..255 and
truncated to uint8 (detectron2 ``convert``: ``astype(np.uint8)`` after ``clip``).
Deviation: saturation and hue are computed in continuous HSV (the hexcone model of
OpenCV) in one round trip, rounded to uint8 once at the end; detectron2 goes through
OpenCV's 8-bit HSV image (hue in 2-degree steps, S truncated to 8 bits) once per step. The
sampled parameters, their ranges and the order are identical; the outputs differ by that
intermediate rounding (a few levels). This keeps the jitter cheap at 1281x1281 without
OpenCV.

The deeplab2 recipe uses an AutoAugment policy instead (spec §4); it is not provided.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ColorAugSSD", "saturate_and_shift_hue"]


def saturate_and_shift_hue(image: np.ndarray, saturation: float | None, hue_steps: int | None) -> np.ndarray:
    """Scale the HSV saturation and rotate the hue of a uint8 RGB image.

    Works in continuous HSV (hexcone model, the one OpenCV uses): ``V = max``, chroma
    ``C = max - min``, ``S = C / V``. Scaling ``S`` by ``a`` (clipped at 1) keeps ``V`` and
    hue, so every channel moves towards ``V``: ``c' = V - (V - c) * C' / C`` with
    ``C' = min(a C, V)``. A hue shift recomputes the channels from ``(H', C', V)``.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        saturation: factor of the saturation, or None.
        hue_steps: hue offset in OpenCV 8-bit steps (2 degrees each), or None.

    Returns:
        uint8 ``[H, W, 3]`` RGB, rounded.
    """
    # [H, W, 3] -> [3, H, W] float planes (contiguous per channel: much faster reductions).
    x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    r, g, b = x
    v = np.maximum(np.maximum(r, g), b)
    chroma = v - np.minimum(np.minimum(r, g), b)
    safe = np.maximum(chroma, np.float32(1e-6))
    new_chroma = chroma if saturation is None else np.minimum(chroma * np.float32(saturation), v)
    if hue_steps is None:
        out = v - (v - x) * (new_chroma / safe)
    else:
        # Hue in sextants [-1, 5) from the maximum channel (R, then G, then B on ties).
        h = np.where(v == r, (g - b) / safe, np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
        h += np.float32(hue_steps * 2.0 / 60.0)
        out = np.empty_like(x)
        for c, n in enumerate((5.0, 3.0, 1.0)):  # R, G, B offsets of the hexcone formula
            k = np.mod(h + np.float32(n), np.float32(6.0))
            out[c] = v - new_chroma * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    out += 0.5
    np.clip(out, 0, 255, out=out)
    # [3, H, W] -> [H, W, 3]
    return np.ascontiguousarray(out.astype(np.uint8).transpose(1, 2, 0))


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``x * alpha + beta``, clipped to 0..255 and truncated to uint8 (detectron2 ``convert``)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class ColorAugSSD:
    """SSD colour jitter of the BD recipe, on the image of a record only (see module doc).

    Args:
        brightness_delta: brightness offset range ``U(-delta, delta)`` in 0..255 units.
        contrast_range: (low, high) of the contrast factor.
        saturation_range: (low, high) of the saturation factor.
        hue_delta: hue offset range in 8-bit hue steps (2 degrees each).

    Call with ``(image, rng)`` for a uint8 or float ``[H, W, 3]`` RGB array in 0..255 (float
    input is rounded to 8 bits first, like BD's uint8 images); returns the same dtype.
    """

    def __init__(self, brightness_delta: float = 32.0, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = int(hue_delta)

    def __repr__(self) -> str:
        return (f"ColorAugSSD(brightness_delta={self.brightness_delta}, contrast_range={self.contrast_range}, "
                f"saturation_range={self.saturation_range}, hue_delta={self.hue_delta})")

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.5:
            return _convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def _saturation_hue(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sat = rng.uniform(*self.saturation_range) if rng.random() < 0.5 else None
        hue = int(rng.integers(-self.hue_delta, self.hue_delta + 1)) if rng.random() < 0.5 else None
        if sat is None and hue is None:
            return img
        return saturate_and_shift_hue(img, sat, hue)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"ColorAugSSD: expected an [H, W, 3] RGB image, got shape {image.shape}")
        dtype = image.dtype
        img = image if dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            img = _convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        if rng.random() < 0.5:
            img = self._contrast(img, rng)
            img = self._saturation_hue(img, rng)
        else:
            img = self._saturation_hue(img, rng)
            img = self._contrast(img, rng)
        return img if dtype == np.uint8 else img.astype(dtype)

    def apply(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Transform interface ``(record, rng) -> record``: jitters ``record["image"]`` only."""
        out = dict(record)
        out["image"] = self(record["image"], rng)
        return out
