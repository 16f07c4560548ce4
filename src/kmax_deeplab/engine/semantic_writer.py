"""Writing semantic predictions: label PNGs with a palette, colour overlays, one JSON listing.

A label PNG is a uint8 ``P``-mode PNG whose pixel values are class ids and whose palette
colours each id with its class colour (the dataset catalog's ``color``; for ADE20K these are
mmseg 0.30's ``ADE20KDataset.PALETTE``, checked by ``tests/test_semantic_predict.py``), so
viewers show colours while ``kmax evaluate --task semantic`` (and mmseg, which reads labels
with Pillow's ``unchanged`` flag) reads the ids. The ids are

* ``"train"``: train ids ``0..C-1`` (the model's classes; what ``kmax evaluate --task
  semantic`` compares against ``reduce_zero_label`` ADE20K ground truth, as mmseg's own
  evaluation does), or
* ``"dataset"``: the dataset's own label values, :func:`dataset_label_ids`: ADE20K's raw
  annotation values ``train id + 1`` (mmseg ``ADE20KDataset.results2img(to_label_id=True)``),
  otherwise the catalog's ``train_id_to_category_id`` (Cityscapes label ids, COCO category ids).

Every file is written atomically (:mod:`kmax_deeplab.fileio`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from kmax_deeplab.engine.writers import UniqueStems, _encode, image_id_for
from kmax_deeplab.fileio import atomic_write_bytes

__all__ = ["LABEL_IDS", "SemanticPredictionWriter", "dataset_label_ids", "label_palette", "write_label_png"]

LABEL_IDS = ("train", "dataset")
REDUCE_ZERO_LABEL_DATASETS = ("ade20k",)  # datasets whose label PNGs hold train id + 1 (0 = other)


def dataset_label_ids(meta: Any) -> np.ndarray:
    """Train id -> dataset label value, int64 ``[C]``.

    ADE20K (``reduce_zero_label``): ``t + 1``; other datasets: ``meta.train_id_to_category_id``.
    """
    if getattr(meta, "name", None) in REDUCE_ZERO_LABEL_DATASETS:
        return np.arange(1, meta.num_classes + 1, dtype=np.int64)
    return np.asarray(meta.train_id_to_category_id, dtype=np.int64)


def label_palette(meta: Any, label_ids: str = "train") -> list[int]:
    """The 768-entry (256 x RGB) PNG palette: each class's colour at its label value, black
    elsewhere (the ignore value 255 and unused values).

    Raises:
        ValueError: ``label_ids`` is not ``"train"`` / ``"dataset"``, or a label value is >= 256.
    """
    if label_ids not in LABEL_IDS:
        raise ValueError(f"--label-ids must be one of {LABEL_IDS}, got {label_ids!r}")
    values = np.arange(meta.num_classes) if label_ids == "train" else dataset_label_ids(meta)
    if values.size and int(values.max()) > 255:
        raise ValueError(f"dataset {meta.name!r}: label values up to {int(values.max())} do not fit a uint8 PNG")
    palette = np.zeros((256, 3), np.uint8)
    for value, cat in zip(values, meta.categories):
        palette[int(value)] = cat.get("color", (128, 128, 128))
    return palette.reshape(-1).tolist()


def write_label_png(path: str | Path, label: np.ndarray, palette: Sequence[int] | None = None) -> None:
    """Write ``label`` ``[H, W]`` (values 0..255) as a uint8 PNG, mode ``P`` with ``palette``
    (mode ``L`` without one), atomically.

    Raises:
        ValueError: a value outside 0..255 or a label that is not 2-D.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{path}: a label map must be [H, W], got shape {label.shape}")
    if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
        raise ValueError(f"{path}: label values must be in 0..255, got {int(label.min())}..{int(label.max())}")
    data = np.ascontiguousarray(label, dtype=np.uint8)
    im = Image.frombytes("P" if palette is not None else "L", (data.shape[1], data.shape[0]), data.tobytes())
    if palette is not None:
        im.putpalette(list(palette))
    atomic_write_bytes(path, _encode(im, "PNG"))


def semantic_overlay(image: np.ndarray, train_ids: np.ndarray, categories: Sequence[dict]) -> Image.Image:
    """:func:`kmax_deeplab.visualize.draw_overlay` of a train-id map: one stuff-style segment
    (its category colour, outline and name) per present class; 255 (ignore) stays unpainted."""
    from kmax_deeplab.visualize import draw_overlay

    present = [int(t) for t in np.unique(train_ids) if 0 <= t < len(categories)]
    segments_map = np.where(train_ids < len(categories), train_ids + 1, 0).astype(np.int64)
    segments = [{"id": t + 1, "category_id": int(categories[t]["id"]), "isthing": 0} for t in present]
    return draw_overlay(image, segments_map, segments, categories)


class SemanticPredictionWriter(UniqueStems):
    """Writes ``<stem>.png`` (label PNG), ``<stem>_overlay.jpg`` and keeps the JSON entries of
    a ``kmax predict --task semantic`` folder run (the journal rebuilds ``predictions.json``:
    ``images``; ``annotations`` with ``image_id``, ``file_name`` of the PNG, ``label_ids``
    and ``classes`` (``train_id``, ``label``, ``name``, ``area`` in pixels per present class);
    ``categories``).

    Args:
        output_dir: the output folder.
        meta: the dataset's ``DatasetMeta`` (class colours, names, label values).
        overlay: also write the colour overlay.
        label_ids: ``"train"`` or ``"dataset"`` (module docstring).

    Raises:
        ValueError: an unknown ``label_ids`` or values that do not fit a uint8 PNG.
    """

    def __init__(self, output_dir: str | Path, meta: Any, *, overlay: bool = True, label_ids: str = "train"):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.categories = [dict(c) for c in meta.categories]
        self.overlay = overlay
        self.label_ids = label_ids
        self.palette = label_palette(meta, label_ids)
        self.values = np.arange(meta.num_classes) if label_ids == "train" else dataset_label_ids(meta)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._stems: set[str] = set()

    def add(self, source: str | Path, image: np.ndarray, prediction: dict) -> str:
        """Write one image's files and remember its JSON entries.

        Args:
            source: the input file (its stem names the outputs; clashes get ``_1``, ``_2``).
            image: ``[H, W, 3]`` uint8 RGB, the original image.
            prediction: ``{"semantic": int [H, W] train ids}`` (a Predictor result).

        Returns:
            The stem used.
        """
        train_ids = np.asarray(prediction["semantic"]).astype(np.int64)
        if train_ids.size and (train_ids.min() < 0 or train_ids.max() >= self.meta.num_classes):
            raise ValueError(f"{source}: semantic prediction has train ids outside 0..{self.meta.num_classes - 1}")
        stem = self._unique_stem(Path(source).stem)
        file_name = f"{stem}.png"
        write_label_png(self.output_dir / file_name, self.values[train_ids], self.palette)
        if self.overlay:
            pil = semantic_overlay(image, train_ids, self.categories)
            atomic_write_bytes(self.output_dir / f"{stem}_overlay.jpg", _encode(pil.convert("RGB"), "JPEG", quality=90))
        counts = np.bincount(train_ids.reshape(-1), minlength=self.meta.num_classes)
        image_id = image_id_for(stem)
        height, width = train_ids.shape
        self.images.append({"id": image_id, "file_name": Path(source).name, "height": int(height),
                            "width": int(width)})
        self.annotations.append({
            "image_id": image_id, "file_name": file_name, "label_ids": self.label_ids,
            "classes": [{"train_id": int(t), "label": int(self.values[t]), "name": self.categories[t]["name"],
                         "area": int(counts[t])} for t in np.flatnonzero(counts)]})
        return stem
