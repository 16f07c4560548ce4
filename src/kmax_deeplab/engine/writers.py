"""Writing predictions in the COCO-panoptic format: id PNGs, ``predictions.json``, overlays.

A panoptic PNG stores segment id ``id = R + 256*G + 256^2*B`` per pixel (0 = void), and the
JSON lists ``images``, ``annotations`` (``image_id``, ``file_name`` of the PNG,
``segments_info``) and ``categories`` -- what ``panopticapi.evaluation.pq_compute`` reads.
Every file is written atomically (:mod:`kmax_deeplab.fileio`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from kmax_deeplab.fileio import atomic_write_bytes, atomic_write_text
from kmax_deeplab.panoptic_ids import id_to_rgb, rgb_to_id  # noqa: F401  (re-exported)

PREDICTIONS_JSON = "predictions.json"
SAVE_FORMATS = ("coco", "cityscapes", "npz")


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_panoptic_png(path: str | Path, panoptic: np.ndarray) -> None:
    """Write ``panoptic`` ``[H, W]`` ids as a COCO-panoptic PNG (atomically)."""
    atomic_write_bytes(path, _encode(Image.fromarray(id_to_rgb(panoptic)), "PNG"))


def json_safe_segments(segments_info: Sequence[dict]) -> list[dict]:
    """Plain-Python copies of ``segments_info`` (ints, bools, floats) for ``json.dumps``."""
    return [{"id": int(s["id"]), "category_id": int(s["category_id"]),
             "isthing": int(bool(s["isthing"])), "score": round(float(s["score"]), 6),
             "area": int(s["area"])} for s in segments_info]


def image_id_for(stem: str) -> int | str:
    """COCO convention: a numeric file stem (``000000142238``) is the integer image id."""
    return int(stem) if stem.isdigit() else stem


class UniqueStems:
    """Output-file stems of one prediction run: an input's stem, or ``stem_1``, ``stem_2`` ... when
    two inputs share one (used by every prediction writer; needs ``self._stems``, a set)."""

    _stems: set[str]

    def reserve_stems(self, stems) -> None:
        """Mark ``stems`` as taken (files of a resumed run), so new images get other names."""
        self._stems.update(str(s) for s in stems)

    def _unique_stem(self, stem: str) -> str:
        candidate, k = stem, 1
        while candidate in self._stems:
            candidate, k = f"{stem}_{k}", k + 1
        self._stems.add(candidate)
        return candidate


class PredictionWriter(UniqueStems):
    """Accumulates predictions of a folder run and writes PNGs, overlays and one JSON.

    Args:
        output_dir: folder receiving ``<stem>.png``, ``<stem>_overlay.jpg`` and
            ``predictions.json``.
        categories: COCO-panoptic category dicts (``id``, ``name``, ``isthing``, ``color``).
        overlay: also write overlays through :func:`kmax_deeplab.visualize.draw_overlay`.
        save_format: ``"coco"`` (``<stem>.png`` ids + ``predictions.json``); ``"cityscapes"``
            (the COCO files plus cityscapesScripts' result files: ``<stem>_labelIds.png``, the
            category id per pixel, 0 = void, and for instance evaluation ``<stem>_pred.txt``
            with one ``<mask png> <category id> <score>`` line per thing segment, masks in
            ``<stem>_instances/``); ``"npz"`` (``<stem>.npz`` with ``panoptic`` int32 and the
            ``segments_info`` columns ``ids``, ``category_ids``, ``isthing``, ``scores``,
            ``areas``, instead of the PNG; ``predictions.json`` names the npz).

    Raises:
        ValueError: an unknown ``save_format``.
    """

    def __init__(self, output_dir: str | Path, categories: Sequence[dict], *, overlay: bool = True,
                 save_format: str = "coco"):
        if save_format not in SAVE_FORMATS:
            raise ValueError(f"--save-format must be one of {SAVE_FORMATS}, got {save_format!r}")
        self.save_format = save_format
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.categories = [dict(c) for c in categories]
        self.overlay = overlay
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._stems: set[str] = set()

    def add(self, source: str | Path, image: np.ndarray, prediction: dict) -> str:
        """Write the files of one image and remember its JSON entries.

        Args:
            source: the input file (its stem names the outputs; clashes get ``_1``, ``_2``).
            image: ``[H, W, 3]`` uint8 RGB, the original image.
            prediction: a :class:`~kmax_deeplab.engine.predictor.Predictor` result.

        Returns:
            The stem used for this image's files.
        """
        stem = self._unique_stem(Path(source).stem)
        panoptic = prediction["panoptic"]
        height, width = panoptic.shape
        segments = prediction["segments_info"]
        if self.save_format == "npz":
            file_name = f"{stem}.npz"
            buf = io.BytesIO()
            np.savez_compressed(
                buf, panoptic=np.asarray(panoptic, dtype=np.int32),
                ids=np.array([s["id"] for s in segments], np.int32),
                category_ids=np.array([s["category_id"] for s in segments], np.int32),
                isthing=np.array([bool(s["isthing"]) for s in segments], bool),
                scores=np.array([s["score"] for s in segments], np.float32),
                areas=np.array([s["area"] for s in segments], np.int64))
            atomic_write_bytes(self.output_dir / file_name, buf.getvalue())
        else:
            file_name = f"{stem}.png"
            write_panoptic_png(self.output_dir / file_name, panoptic)
        if self.save_format == "cityscapes":
            self._write_cityscapes(stem, np.asarray(panoptic), segments)
        if self.overlay:
            from kmax_deeplab.visualize import draw_overlay

            pil = draw_overlay(image, panoptic, prediction["segments_info"], self.categories)
            atomic_write_bytes(self.output_dir / f"{stem}_overlay.jpg",
                               _encode(pil.convert("RGB"), "JPEG", quality=90))
        image_id = image_id_for(stem)
        self.images.append({"id": image_id, "file_name": Path(source).name, "height": int(height),
                            "width": int(width)})
        self.annotations.append({"image_id": image_id, "file_name": file_name,
                                 "segments_info": json_safe_segments(prediction["segments_info"])})
        return stem

    def _write_cityscapes(self, stem: str, panoptic: np.ndarray, segments: Sequence[dict]) -> None:
        """cityscapesScripts' semantic (label ids) and instance (txt + masks) result files."""
        label_ids = np.zeros(panoptic.shape, np.uint8 if max(
            [int(s["category_id"]) for s in segments] + [0]) < 256 else np.uint16)
        lines = []
        inst_dir = self.output_dir / f"{stem}_instances"
        for k, s in enumerate(segments):
            mask = panoptic == int(s["id"])
            label_ids[mask] = int(s["category_id"])
            if s["isthing"]:
                inst_dir.mkdir(exist_ok=True)
                name = f"{stem}_instances/{stem}_{k:03d}.png"
                atomic_write_bytes(self.output_dir / name,
                                   _encode(Image.fromarray(mask.astype(np.uint8) * 255), "PNG"))
                lines.append(f"{name} {int(s['category_id'])} {float(s['score']):.6f}")
        atomic_write_bytes(self.output_dir / f"{stem}_labelIds.png",
                           _encode(Image.fromarray(label_ids), "PNG"))
        atomic_write_text(self.output_dir / f"{stem}_pred.txt", "".join(l + "\n" for l in lines))

    def finish(self) -> Path:
        """Write ``predictions.json`` (COCO-panoptic) atomically and return its path."""
        path = self.output_dir / PREDICTIONS_JSON
        data = {"images": self.images, "annotations": self.annotations,
                "categories": self.categories}
        atomic_write_text(path, json.dumps(data))
        return path
