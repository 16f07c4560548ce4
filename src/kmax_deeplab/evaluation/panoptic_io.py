"""Reading COCO-panoptic files: id PNGs, JSON annotations, image matching.

A panoptic PNG stores one segment id per pixel as ``id = R + 256 G + 256² B``
(panopticapi ``utils.rgb2id``); 0 is VOID unless ``segments_info`` lists it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from kmax_deeplab.evaluation.errors import PanopticEvaluationError
from kmax_deeplab.evaluation.png_fast import decode_panoptic_png_ids
from kmax_deeplab.panoptic_ids import rgb_to_id

__all__ = [
    "rgb_to_id",
    "read_panoptic_png",
    "load_panoptic_json",
    "match_annotations",
    "categories_by_id",
]


def read_panoptic_png(path: str | os.PathLike, *, image_id: Any = None, fast: bool = True) -> np.ndarray:
    """Read a panoptic PNG as ``[H, W]`` uint32 segment ids.

    RGB(A) images are decoded with :func:`rgb_to_id`; single-channel images (``L``,
    ``I``, ``I;16``, ``P`` indices) are taken as ids directly, as panopticapi does.

    Args:
        path: the PNG file (a binary file object is read by Pillow only).
        image_id: only used in error messages.
        fast: try :func:`~kmax_deeplab.evaluation.png_fast.decode_panoptic_png_ids`
            first (8-bit RGB/RGBA PNGs; identical ids, several times faster); every
            other file, and ``fast=False``, goes through Pillow.

    Raises:
        PanopticEvaluationError: the file is missing or cannot be decoded.
    """
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)
    try:
        if fast and isinstance(path, (str, os.PathLike)):
            with open(path, "rb") as f:
                data = f.read()
            ids = decode_panoptic_png_ids(data)
            if ids is not None:
                return ids
            path = io.BytesIO(data)  # not a plain 8-bit RGB(A) PNG: Pillow decides
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA"):
                # Pillow keeps 4 bytes per pixel: one packed copy, viewed as little-endian
                # uint32, alpha/padding byte masked off -> [H, W] ids (no per-channel math).
                raw = img.tobytes("raw", "RGBX" if img.mode == "RGB" else "RGBA")
                ids = np.frombuffer(raw, dtype="<u4").reshape(img.height, img.width)
                return (ids & np.uint32(0xFFFFFF)).astype(np.uint32, copy=False)
            arr = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as exc:
        what = f" (image {image_id!r})" if image_id is not None else ""
        raise PanopticEvaluationError(f"cannot read panoptic PNG {name}{what}: {exc}") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] < 3:
        what = f" (image {image_id!r})" if image_id is not None else ""
        raise PanopticEvaluationError(
            f"panoptic PNG {name}{what} has {arr.shape[2]} channels; expected RGB(A) "
            f"colours R + 256 G + 256² B or one channel of ids")
    return rgb_to_id(arr, np.uint32)


def load_panoptic_json(path: str | os.PathLike) -> dict:
    """Load a COCO-panoptic JSON file (must hold an ``annotations`` list).

    Raises:
        PanopticEvaluationError: unreadable JSON or no ``annotations`` list.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as exc:
        raise PanopticEvaluationError(
            f"cannot read panoptic JSON {os.fspath(path)}: not UTF-8 text ({exc.reason} at byte "
            f"{exc.start})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PanopticEvaluationError(f"cannot read panoptic JSON {os.fspath(path)}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise PanopticEvaluationError(f"{os.fspath(path)}: not a COCO-panoptic JSON (no 'annotations' list)")
    return data


def match_annotations(gt_json: dict, pred_json: dict) -> list[tuple[dict, dict]]:
    """Pair each ground-truth annotation with the prediction of the same ``image_id``.

    Follows panopticapi ``pq_compute``: GT order is kept, predictions for images not
    in the GT are ignored, and when a prediction ``image_id`` repeats the last wins.

    Raises:
        PanopticEvaluationError: a ground-truth image has no prediction, or two GT
            annotations share an ``image_id``.
    """
    preds = {}
    for ann in pred_json["annotations"]:
        if "image_id" not in ann:
            raise PanopticEvaluationError(f"a prediction annotation has no 'image_id': {_short(ann)}")
        preds[ann["image_id"]] = ann
    pairs = []
    seen: set = set()
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann.get("image_id")
        try:
            duplicate = image_id in seen
            seen.add(image_id)
        except TypeError:  # an unhashable id (list, dict)
            raise PanopticEvaluationError(
                f"ground-truth annotation image_id {image_id!r} is not a number or string") from None
        if duplicate:
            raise PanopticEvaluationError(
                f"ground truth has two annotations with image_id {image_id!r} (file names "
                f"{_dup_names(gt_json, image_id)}); image ids must be unique")
        if image_id not in preds:
            raise PanopticEvaluationError(f"no prediction for the image with id {image_id!r}")
        pairs.append((gt_ann, preds[image_id]))
    return pairs


def _dup_names(gt_json: dict, image_id: Any) -> list:
    return [a.get("file_name") for a in gt_json["annotations"] if a.get("image_id") == image_id][:4]


def categories_by_id(categories: Sequence[dict] | dict) -> dict[int, dict]:
    """Return ``{category_id: category}`` in the given order (each needs ``id``, ``isthing``)."""
    if isinstance(categories, dict):
        categories = list(categories.values())
    out: dict[int, dict] = {}
    for cat in categories:
        if "id" not in cat or "isthing" not in cat:
            raise PanopticEvaluationError(f"category {_short(cat)} needs 'id' and 'isthing'")
        out[cat["id"]] = cat
    if not out:
        raise PanopticEvaluationError("no categories given")
    return out


def resolve_folder(json_file: str | os.PathLike, folder: str | os.PathLike | None) -> Path:
    """Return ``folder`` or, as panopticapi does, ``json_file`` without ``.json``."""
    if folder is None:
        folder = os.fspath(json_file).replace(".json", "")
    folder = Path(folder)
    if not folder.is_dir():
        raise PanopticEvaluationError(f"segmentation folder {folder} does not exist")
    return folder


def _short(obj: Any, limit: int = 120) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
