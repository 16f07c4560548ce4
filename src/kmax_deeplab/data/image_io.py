"""Reading images and panoptic PNGs robustly.

Panoptic PNGs store a segment id per pixel as ``id = R + 256*G + 256**2*B`` (COCO-panoptic
convention, panopticapi ``rgb2id``; the encoding lives in :mod:`kmax_deeplab.panoptic_ids`
and is re-exported here); id 0 is void.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from kmax_deeplab.panoptic_ids import id_to_rgb, rgb_to_id

__all__ = ["PanopticDataError", "load_rgb_image", "load_panoptic_png", "rgb_to_id", "id_to_rgb"]


class PanopticDataError(ValueError):
    """A panoptic sample is malformed; the message names the file and the problem."""


def load_rgb_image(path: str | Path, exif_transpose: bool = True, dtype: Any = np.float32) -> np.ndarray:
    """Read an image as RGB float32 (or uint8) with values in 0..255.

    Accepts every mode Pillow reads: grayscale (``L``, ``1``), ``LA``, ``RGBA`` (alpha
    dropped), palette (``P``), ``CMYK``, 16-bit (``I;16``/``I``; scaled by 255/65535) and
    float (``F``; values taken as 0..255 if their max is <= 255, else as 0..65535). EXIF
    orientation is applied (``PIL.ImageOps.exif_transpose``).

    Args:
        path: image file.
        exif_transpose: rotate/flip according to the EXIF orientation tag.
        dtype: ``np.float32`` (default) or ``np.uint8`` (8-bit images exactly; 16-bit and
            float images rounded to 8 bits), the compact form the training transforms use.

    Returns:
        ``[H, W, 3]`` RGB in 0..255 of ``dtype`` (H, W after the EXIF rotation).

    Raises:
        ValueError: ``dtype`` is neither float32 nor uint8.

    Raises:
        PanopticDataError: missing, unreadable or truncated file.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
        raise ValueError(f"load_rgb_image: dtype must be float32 or uint8, got {dtype}")
    path = Path(path)
    if not path.is_file():
        raise PanopticDataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
                if exif_transpose:
                    im = ImageOps.exif_transpose(im)
            arr = _to_rgb_array(im, dtype)
    except PanopticDataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise PanopticDataError(f"{path}: unreadable or truncated image ({e})") from e
    return arr


def _to_rgb_array(im: Image.Image, dtype: np.dtype) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") and dtype == np.uint8:
        return np.clip(np.rint(_to_rgb_array(im, np.dtype(np.float32))), 0, 255).astype(np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        # 16-bit PNGs open as "I;16" or "I" (32-bit container); scale the 16-bit range.
        scale = 255.0 / 65535.0 if (mode != "I" or a.max(initial=0) > 255) else 1.0
        g = (a * scale).astype(np.float32)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im).astype(np.float32)
        if a.max(initial=0) > 255:
            a = a * (255.0 / 65535.0)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=dtype).copy()


def load_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a COCO-panoptic PNG and decode its segment ids.

    Returns:
        int64 ``[H, W]`` segment ids ``R + 256*G + 256**2*B`` (0 = void).

    Raises:
        PanopticDataError: missing, unreadable or truncated file, or a PNG that is not RGB.
    """
    path = Path(path)
    if not path.is_file():
        raise PanopticDataError(f"{path}: panoptic PNG not found")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "RGBA":
                im = im.convert("RGB")
            if im.mode != "RGB":
                raise PanopticDataError(
                    f"{path}: panoptic PNG must be RGB (id = R + 256*G + 256^2*B), got mode {im.mode}")
            rgb = np.asarray(im)
    except PanopticDataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise PanopticDataError(f"{path}: unreadable or truncated panoptic PNG ({e})") from e
    return rgb_to_id(rgb)
