"""A synthetic panoptic dataset of textured stuff and overlapping shapes (``kmax demo``, tests).

Each image has 2-3 stuff regions (sky, ground, wall: category ids 5, 6, 7), each with its
own texture (gradient + soft noise; noisy speckle; brick lines), and 1-5 thing objects of 4
shape classes (disc 1, square 2, triangle 3, star 4) with random size, rotation, position
and occlusion. Object colours are drawn independently of the class, so a model has to
recognise the shape. The files are written in COCO-panoptic format and read back by
:class:`~kmax_deeplab.data.coco_panoptic.COCOPanopticDataset` with
``get_dataset_meta("synthetic")``::

    root/train/images/000000.jpg   root/train/panoptic/000000.png   root/train/panoptic.json
    root/val/...

which is the layout of the ``synthetic/kmax_tiny`` preset's ``DataConfig``. Output is
byte-identical for equal arguments (one ``numpy`` generator seeded from ``seed`` and the
split; Pillow's JPEG/PNG encoders are deterministic).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from kmax_deeplab.data.catalog import SYNTHETIC_CATEGORIES
from kmax_deeplab.data.image_io import id_to_rgb
from kmax_deeplab.fileio import atomic_write_text

__all__ = ["write_synthetic_dataset", "render_synthetic_sample", "THING_IDS", "STUFF_IDS"]

THING_IDS = {"disc": 1, "square": 2, "triangle": 3, "star": 4}
STUFF_IDS = {"sky": 5, "ground": 6, "wall": 7}
LABEL_DIVISOR = 1000
MIN_THING_AREA_FRACTION = 0.004  # things smaller than this after occlusion are dropped


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
               for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.42
            a = angle + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    else:
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        draw.polygon(_shape_polygon(kind, cx, cy, r, angle), fill=1)
    return np.asarray(canvas, dtype=bool)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bilinearly to ``size``."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    # Bilinear interpolation of the grid: rows then columns.
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _stuff_texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [S, S, 3] texture of one stuff class."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "sky":
        top = np.array([40, 90, 200]) + rng.uniform(-30, 30, 3)
        bottom = np.array([170, 210, 245]) + rng.uniform(-25, 25, 3)
        tex = top * (1 - yy[..., None]) + bottom * yy[..., None]
        tex += 40 * (_smooth_noise(rng, size, 3)[..., None] - 0.5)  # soft clouds
    elif kind == "ground":
        base = np.array([90, 130, 50]) + rng.uniform(-40, 40, 3)
        tex = base * (0.75 + 0.5 * yy[..., None])
        tex += 45 * (_smooth_noise(rng, size, 12)[..., None] - 0.5)
        tex += rng.normal(0, 14, (size, size, 1))  # grainy speckle
    else:  # wall: bricks
        base = np.array([150, 80, 60]) + rng.uniform(-40, 40, 3)
        mortar = np.array([200, 195, 185]) + rng.uniform(-20, 20, 3)
        bh = rng.integers(6, 11)
        bw = 2 * bh
        row = (np.arange(size) // bh)[:, None]
        shift = (row % 2) * (bw // 2)
        xs = (np.arange(size)[None, :] + shift) % bw
        line = ((np.arange(size) % bh)[:, None] == 0) | (xs == 0)
        tex = np.where(line[..., None], mortar, base) * (0.9 + 0.2 * xx[..., None])
        tex += rng.normal(0, 6, (size, size, 1))
    return tex.astype(np.float32)


def _stuff_layout(rng: np.random.Generator, size: int) -> tuple[list[str], np.ndarray]:
    """Return the stuff classes used and an int map [S, S] of their index (wavy bands)."""
    n = int(rng.integers(2, 4))
    kinds = list(rng.permutation(list(STUFF_IDS))[:n])
    # n-1 wavy horizontal boundaries with bands of >= 20% height each.
    cuts = np.sort(rng.uniform(0.2, 0.8, n - 1))
    while n == 3 and cuts[1] - cuts[0] < 0.2:
        cuts = np.sort(rng.uniform(0.2, 0.8, n - 1))
    x = np.arange(size) / size
    band = np.zeros((size, size), dtype=np.int64)
    y = np.arange(size)[:, None] / size
    for c in cuts:
        amp, freq, phase = rng.uniform(0.02, 0.06), rng.uniform(1, 3), rng.uniform(0, 2 * math.pi)
        boundary = c + amp * np.sin(2 * math.pi * freq * x + phase)
        band += (y >= boundary[None, :]).astype(np.int64)
    return [str(k) for k in kinds], band


def render_synthetic_sample(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Draw one synthetic image with its panoptic ground truth.

    Args:
        rng: the random generator (all randomness comes from it).
        size: image side S in pixels.

    Returns:
        ``(image, ids, segments_info)``: uint8 ``[S, S, 3]`` RGB, int64 ``[S, S]`` segment ids
        (``category_id * 1000 + instance``; every pixel is labelled) and COCO-panoptic
        segments ``{"id", "category_id", "iscrowd", "area", "bbox"}``.
    """
    while True:
        kinds, band = _stuff_layout(rng, size)
        ids = np.zeros((size, size), dtype=np.int64)
        for k, kind in enumerate(kinds):
            ids[band == k] = STUFF_IDS[kind] * LABEL_DIVISOR
        things = []
        for inst in range(int(rng.integers(1, 6))):
            kind = str(rng.choice(list(THING_IDS)))
            r = rng.uniform(0.09, 0.22) * size
            cx, cy = rng.uniform(0.1, 0.9, 2) * size
            mask = _shape_mask(kind, size, cx, cy, r, rng.uniform(0, 2 * math.pi))
            sid = THING_IDS[kind] * LABEL_DIVISOR + inst + 1
            ids[mask] = sid
            colour = rng.integers(0, 256, 3).astype(np.float32)
            things.append((sid, colour, rng.uniform(-60, 60, 2)))
        # Drop things occluded to slivers: give their pixels back to the stuff band below.
        stuff_ids = np.array([STUFF_IDS[k] * LABEL_DIVISOR for k in kinds])
        for sid, _, _ in things:
            m = ids == sid
            if 0 < m.sum() < MIN_THING_AREA_FRACTION * size * size:
                ids[m] = stuff_ids[band[m]]
        present = set(np.unique(ids).tolist())
        if sum(int(s) in present for s in stuff_ids) >= 2 and any(sid in present for sid, _, _ in things):
            break
    image = np.zeros((size, size, 3), dtype=np.float32)
    for k, kind in enumerate(kinds):
        m = ids == stuff_ids[k]
        image[m] = _stuff_texture(kind, rng, size)[m]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    for sid, colour, grad in things:
        m = ids == sid
        if m.any():
            shade = colour[None, None, :] + (grad[0] * xx + grad[1] * yy)[..., None]
            image[m] = shade[m]
    image += rng.normal(0, 4, image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    segments = []
    for sid in sorted(present):
        ys, xs = np.nonzero(ids == sid)
        segments.append({"id": int(sid), "category_id": int(sid // LABEL_DIVISOR), "iscrowd": 0,
                         "area": int(ys.size),
                         "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                  int(ys.max() - ys.min() + 1)]})
    return image, ids, segments


def _encode(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_synthetic_dataset(root: str | Path, num_train: int, num_val: int, image_size: int = 128,
                            seed: int = 0) -> dict[str, Path]:
    """Write the synthetic dataset in COCO-panoptic format under ``root``.

    Args:
        root: output folder (created).
        num_train / num_val: images per split.
        image_size: side of the square images, pixels.
        seed: RNG seed; equal arguments give byte-identical files.

    Returns:
        ``{"train": root/train/panoptic.json, "val": root/val/panoptic.json}``.
    """
    root = Path(root)
    categories = [{"id": i, "name": n, "isthing": t, "color": list(c), "supercategory": "shape" if t else "scene"}
                  for i, n, t, c in SYNTHETIC_CATEGORIES]
    out = {}
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        rng = np.random.default_rng([seed, split_index])
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "panoptic").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, ids, segments = render_synthetic_sample(rng, image_size)
            name = f"{i:06d}"
            # Plain writes for speed; the JSON is written atomically last, so an
            # interrupted run leaves no panoptic.json that points at missing files.
            (root / split / "images" / f"{name}.jpg").write_bytes(
                _encode(Image.fromarray(image), "JPEG", quality=95))
            (root / split / "panoptic" / f"{name}.png").write_bytes(
                _encode(Image.fromarray(id_to_rgb(ids)), "PNG"))
            images.append({"id": i, "file_name": f"{name}.jpg", "height": image_size, "width": image_size})
            annotations.append({"image_id": i, "file_name": f"{name}.png", "segments_info": segments})
        path = root / split / "panoptic.json"
        atomic_write_text(path, json.dumps({"info": {"description": f"kmax-deeplab synthetic shapes, seed {seed}"},
                                            "images": images, "annotations": annotations,
                                            "categories": categories}))
        out[split] = path
    return out
