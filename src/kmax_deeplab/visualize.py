"""Panoptic visualisation: colour maps, overlays with outlines and class names, image grids.

Colours come from the dataset categories (COCO-panoptic ``color``); every thing instance
gets its own colour, jittered deterministically from its segment id around the category
colour, so neighbouring instances of one class stay distinguishable. Void (id 0 unless
listed in ``segments_info``) is black in :func:`colorize_panoptic` and left unpainted in
:func:`draw_overlay`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from kmax_deeplab.fileio import atomic_write_bytes

__all__ = ["colorize_panoptic", "draw_overlay", "save_grid", "segment_color", "sample_to_panoptic",
           "dataset_overview"]


def _category_table(categories: Any) -> dict[int, Mapping[str, Any]]:
    cats = getattr(categories, "categories", categories)  # a DatasetMeta works too
    return {int(c["id"]): c for c in cats}


def segment_color(segment: Mapping[str, Any], category: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """Colour of one segment: the category colour, jittered by segment id for things.

    Args:
        segment: a ``segments_info`` entry (``id``, ``category_id``, optional ``isthing``).
        category: its category dict, or ``None`` (unknown category: grey).
    """
    if category is None:
        return (128, 128, 128)
    base = np.array(category.get("color", (128, 128, 128)), dtype=np.float64)
    isthing = segment.get("isthing", category.get("isthing", 0))
    if not isthing:
        return tuple(int(v) for v in base)
    rng = np.random.default_rng(int(segment["id"]) & 0xFFFFFFFF)
    return tuple(int(v) for v in np.clip(base + rng.uniform(-60, 60, 3), 0, 255))


def colorize_panoptic(panoptic: Any, segments_info: Sequence[Mapping[str, Any]], categories: Any) -> np.ndarray:
    """Colour a panoptic map.

    Args:
        panoptic: int ``[H, W]`` segment ids (numpy array or tensor).
        segments_info: COCO-panoptic segments ``{"id", "category_id", ...}``.
        categories: category dicts ``{"id", "color", "isthing", ...}`` or a ``DatasetMeta``.

    Returns:
        uint8 ``[H, W, 3]``; pixels of unlisted ids (void) are black.
    """
    pan = np.asarray(panoptic.cpu() if hasattr(panoptic, "cpu") else panoptic).astype(np.int64)
    table = _category_table(categories)
    out = np.zeros(pan.shape + (3,), dtype=np.uint8)
    for seg in segments_info:
        out[pan == int(seg["id"])] = segment_color(seg, table.get(int(seg["category_id"])))
    return out


def _label_anchor(mask: np.ndarray) -> tuple[int, int]:
    """A pixel well inside ``mask`` (the maximum of its distance transform), as (x, y)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def draw_overlay(
    image: Any,
    panoptic: Any,
    segments_info: Sequence[Mapping[str, Any]],
    categories: Any,
    alpha: float = 0.5,
    outlines: bool = True,
    labels: bool = True,
    min_label_area: float = 0.002,
) -> Image.Image:
    """Blend the panoptic colouring over an image, with thing outlines and class names.

    Args:
        image: uint8 ``[H, W, 3]`` RGB (array, or a PIL image).
        panoptic: int ``[H, W]`` segment ids.
        segments_info: COCO-panoptic segments.
        categories: category dicts or a ``DatasetMeta``.
        alpha: opacity of the colouring (0 = image only, 1 = colours only).
        outlines: draw a white outline around each thing instance.
        labels: write class names (PIL's default font) on segments covering at least
            ``min_label_area`` of the image.
        min_label_area: fraction of the image below which segments get no label.

    Returns:
        an RGB ``PIL.Image`` of size W x H.

    Raises:
        ValueError: image and panoptic sizes differ.
    """
    from kmax_deeplab.data.image_io import image_to_rgb

    img = image_to_rgb(image, np.uint8)  # the one image conversion (EXIF, 16-bit, palette, ...)
    pan = np.asarray(panoptic.cpu() if hasattr(panoptic, "cpu") else panoptic).astype(np.int64)
    if img.shape[:2] != pan.shape:
        raise ValueError(f"image {img.shape[:2]} and panoptic {pan.shape} sizes differ")
    table = _category_table(categories)
    colour = colorize_panoptic(pan, segments_info, table.values())
    painted = np.isin(pan, [int(s["id"]) for s in segments_info])[..., None]
    blend = img.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha
    out = np.where(painted, blend, img.astype(np.float32)).round().astype(np.uint8)
    if outlines:
        for seg in segments_info:
            cat = table.get(int(seg["category_id"]), {})
            if seg.get("isthing", cat.get("isthing", 0)):
                m = pan == int(seg["id"])
                edge = m & ~ndimage.binary_erosion(m)
                out[edge] = 255
    pil = Image.fromarray(out)
    if labels:
        draw = ImageDraw.Draw(pil)
        font = ImageFont.load_default()
        for seg in segments_info:
            m = pan == int(seg["id"])
            if m.sum() < min_label_area * pan.size:
                continue
            name = str(table.get(int(seg["category_id"]), {}).get("name", seg["category_id"]))
            x, y = _label_anchor(m)
            l, t, r, b = draw.textbbox((0, 0), name, font=font)
            tw, th = r - l, b - t
            x0 = min(max(0, x - tw // 2), max(0, pil.width - tw - 2))
            y0 = min(max(0, y - th // 2), max(0, pil.height - th - 2))
            draw.rectangle([x0, y0, x0 + tw + 2, y0 + th + 2], fill=(0, 0, 0))
            draw.text((x0 + 1 - l, y0 + 1 - t), name, fill=(255, 255, 255), font=font)
    return pil


def save_grid(images: Iterable[Any], path: str | Path, columns: int = 4, margin: int = 4,
              background: tuple[int, int, int] = (255, 255, 255)) -> Path:
    """Paste images (PIL or uint8 ``[H, W, 3]``) into a grid and save it (PNG unless named).

    Cells have the size of the largest image; images are top-left aligned.

    Returns:
        the written path.

    Raises:
        ValueError: no images or ``columns < 1``.
    """
    pils = [im.convert("RGB") if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8))
            for im in images]
    if not pils or columns < 1:
        raise ValueError("save_grid needs at least one image and columns >= 1")
    cw, ch = max(p.width for p in pils), max(p.height for p in pils)
    cols = min(columns, len(pils))
    rows = (len(pils) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cw + (cols + 1) * margin, rows * ch + (rows + 1) * margin), background)
    for k, p in enumerate(pils):
        r, c = divmod(k, cols)
        grid.paste(p, (margin + c * (cw + margin), margin + r * (ch + margin)))
    path = Path(path)
    buf = io.BytesIO()
    grid.save(buf, format=(path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"))
    atomic_write_bytes(path, buf.getvalue())
    return path


def sample_to_panoptic(sample: Mapping[str, Any], meta: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Rebuild ``(panoptic [H, W] int64, segments_info)`` from a dataset sample.

    Args:
        sample: a dataset sample (``masks`` bool ``[M, H, W]``, ``labels`` ``[M]`` train ids,
            ``segment_ids`` ``[M]``, ``is_crowd`` ``[M]``).
        meta: its ``DatasetMeta`` (train id -> category id, thing flags).
    """
    masks = np.asarray(sample["masks"])
    pan = np.zeros(masks.shape[1:], dtype=np.int64)
    info = []
    for m, t, sid, crowd in zip(masks, np.asarray(sample["labels"]), np.asarray(sample["segment_ids"]),
                                np.asarray(sample["is_crowd"])):
        pan[m] = int(sid)
        info.append({"id": int(sid), "category_id": int(meta.train_id_to_category_id[int(t)]),
                     "isthing": int(meta.is_thing(int(t))), "iscrowd": int(crowd), "area": int(m.sum())})
    return pan, info


def dataset_overview(samples: Iterable[Mapping[str, Any]], meta: Any, path: str | Path,
                     columns: int = 4, scale: int = 2) -> Path:
    """Save a grid of (image, panoptic overlay) pairs for dataset samples.

    Args:
        samples: dataset samples (``image`` float ``[3, H, W]`` 0..255 plus the target keys).
        meta: the dataset's ``DatasetMeta``.
        path: output picture.
        columns: pairs per row.
        scale: integer upscaling (nearest) of small images so labels stay readable.
    """
    tiles = []
    for s in samples:
        img = np.asarray(s["image"]).transpose(1, 2, 0).clip(0, 255).round().astype(np.uint8)
        pan, info = sample_to_panoptic(s, meta)
        if scale > 1:
            img = img.repeat(scale, 0).repeat(scale, 1)
            pan = pan.repeat(scale, 0).repeat(scale, 1)
        tiles.append(Image.fromarray(img))
        tiles.append(draw_overlay(img, pan, info, meta, alpha=0.55))
    return save_grid(tiles, path, columns=2 * columns)
