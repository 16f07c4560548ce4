"""Reading images and panoptic PNGs robustly.

Panoptic PNGs store a segment id per pixel as ``id = R + 256*G + 256**2*B`` (COCO-panoptic
convention, panopticapi ``rgb2id``; the encoding lives in :mod:`kmax_deeplab.panoptic_ids`
and is re-exported here); id 0 is void.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from kmax_deeplab.panoptic_ids import id_to_rgb, rgb_to_id

__all__ = ["PanopticDataError", "ImageReadError", "ImageTooLargeError", "DEFAULT_MAX_PIXELS",
           "load_rgb_image", "image_to_rgb", "load_panoptic_png", "rgb_to_id", "id_to_rgb"]


class PanopticDataError(ValueError):
    """A panoptic sample is malformed; the message names the file and the problem."""


DEFAULT_MAX_PIXELS = 89_478_485
"""Largest ``H * W`` read by default: Pillow's decompression-bomb limit (``MAX_IMAGE_PIXELS``)."""

_PIL_LIMIT_LOCK = threading.Lock()


class ImageReadError(PanopticDataError):
    """An image file cannot be read (missing, truncated, not an image, too many pixels)."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than allowed (a decompression bomb, or ``--max-pixels``)."""


def load_rgb_image(path: str | Path, exif_transpose: bool = True, dtype: Any = np.float32,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB float32 (or uint8) with values in 0..255: THE image reader.

    Prediction (``Predictor``, ``kmax predict``), training (``COCOPanopticDataset``),
    validation and the overlays all read images through this function (and
    :func:`image_to_rgb` for in-memory images), so one file gives one array everywhere.

    Accepts every mode Pillow reads: grayscale (``L``, ``1``), ``LA`` and ``RGBA`` (alpha
    dropped), palette (``P``, transparency dropped), ``CMYK``, 16-bit (``I;16``/``I``;
    scaled by 255/65535) and float (``F``; see :func:`image_to_rgb` for the value range).
    EXIF orientation is applied (``PIL.ImageOps.exif_transpose``).

    Args:
        path: image file.
        exif_transpose: rotate/flip according to the EXIF orientation tag.
        dtype: ``np.float32`` (default) or ``np.uint8`` (8-bit images exactly; 16-bit and
            float images rounded to 8 bits), the compact form the training transforms use.
        max_pixels: refuse images with more than this many pixels (``H * W``) before
            decoding them (a decompression bomb: a small file that decodes to gigabytes);
            ``None``: no limit.

    Returns:
        ``[H, W, 3]`` RGB in 0..255 of ``dtype`` (H, W after the EXIF rotation).

    Raises:
        ValueError: ``dtype`` is neither float32 nor uint8.
        ImageTooLargeError: more than ``max_pixels`` pixels (names the file and the size).
        ImageReadError: missing, unreadable or truncated file (a ``PanopticDataError``).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
        raise ValueError(f"load_rgb_image: dtype must be float32 or uint8, got {dtype}")
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    try:
        with _open_limited(path, max_pixels) as im:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
                if exif_transpose:
                    im = ImageOps.exif_transpose(im)
            arr = _to_rgb_array(im, dtype)
    except PanopticDataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: unreadable or truncated image ({e})") from e
    return arr


def _open_limited(path: Path, max_pixels: int | None) -> Image.Image:
    """``Image.open`` that checks ``W * H <= max_pixels`` before any pixel is decoded."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        # Our limit replaces Pillow's global one (its warning and its 2x error).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        im.close()
        raise ImageTooLargeError(
            f"{path}: {width}x{height} = {width * height} pixels is more than the limit of "
            f"{max_pixels} (a decompression bomb?); raise --max-pixels to read it")
    if width == 0 or height == 0:
        im.close()
        raise ImageReadError(f"{path}: empty image ({width}x{height})")
    return im


def image_to_rgb(image: Any, dtype: Any = np.uint8, exif_transpose: bool = True) -> np.ndarray:
    """An in-memory image (PIL image or numpy array) as ``[H, W, 3]`` RGB in 0..255.

    The same conversion as :func:`load_rgb_image`. Arrays: ``[H, W]`` grey,
    ``[H, W, 1]``, ``[H, W, 2]`` (grey + alpha), ``[H, W, 3]`` RGB, ``[H, W, 4]`` RGBA
    (alpha dropped); dtype ``uint8`` (as is), ``bool`` (x255), ``uint16`` (x255/65535),
    float (values in 0..1 when the maximum is <= 1, scaled x255; else 0..255 if the
    maximum is <= 255; else 0..65535, scaled x255/65535), other integers (0..255).

    Args:
        image: a ``PIL.Image.Image`` or a numpy array.
        dtype: ``np.uint8`` (default; rounded) or ``np.float32``.
        exif_transpose: apply the EXIF orientation of a PIL image.

    Returns:
        ``[H, W, 3]`` of ``dtype``.

    Raises:
        ValueError: an empty image, a bad shape, NaN/inf values, or an unsupported dtype.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
        raise ValueError(f"image_to_rgb: dtype must be float32 or uint8, got {dtype}")
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"empty image ({image.width}x{image.height})")
        if exif_transpose:
            image = ImageOps.exif_transpose(image)
        return _to_rgb_array(image, dtype)
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 2:
        a = a[:, :, 0]  # grey + alpha
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"image array must be [H, W], [H, W, 1..4], got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"empty image array of shape {a.shape}")
    if a.ndim == 3:
        a = a[:, :, :3]
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == bool:
        out = a.astype(np.uint8) * 255
    else:
        if a.dtype.kind not in "fiu":
            raise ValueError(f"image array dtype {a.dtype} is not supported")
        f = a.astype(np.float64)
        if a.dtype.kind == "f":
            if not np.isfinite(f).all():
                raise ValueError("image array has NaN or inf values")
            peak = f.max(initial=0.0)
            f = f * 255.0 if peak <= 1.0 else (f if peak <= 255.0 else f * (255.0 / 65535.0))
        elif a.dtype == np.uint16:
            f = f * (255.0 / 65535.0)
        out = f
    if a.ndim == 2:
        out = np.repeat(np.asarray(out)[:, :, None], 3, axis=2)
    if dtype == np.uint8:
        if out.dtype != np.uint8:
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out)
    return np.ascontiguousarray(out, dtype=np.float32)


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
        return image_to_rgb(np.asarray(im), np.float32)
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
