"""Datasets in COCO-panoptic format (COCO, ADE20K, Cityscapes-panoptic, synthetic, custom).

A COCO-panoptic dataset is an image folder, a JSON file (``images``, ``annotations`` with
``segments_info``, ``categories``) and a folder of PNGs whose pixels hold segment ids
``R + 256*G + 256**2*B``. Cityscapes-panoptic files written by cityscapesScripts
``createPanopticImgs --use-train-id`` have only ``annotations`` (string image ids) and use
the train id as ``category_id``; they are read by the same class (see ``category_id_is_train_id``).

Every sample is checked: a PNG id missing from ``segments_info``, a ``segments_info`` id
missing from the PNG, an unknown category, a PNG/image size mismatch, an unreadable or
truncated file or a missing file raises :class:`PanopticDataError` naming the file and the
problem (or, with ``on_bad_sample="skip"``, warns and moves on to the next sample).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kmax_deeplab.data.catalog import DatasetMeta
from kmax_deeplab.data.image_io import PanopticDataError, id_to_rgb, load_panoptic_png, load_rgb_image
from kmax_deeplab.data.record import build_sample

__all__ = ["COCOPanopticDataset", "PanopticDataError", "encode_panoptic"]

Transform = Callable[[dict, np.random.Generator], dict]


class COCOPanopticDataset(Dataset):
    """A panoptic dataset in COCO-panoptic (or Cityscapes-panoptic) format.

    ``dataset[i]`` returns the sample dict of the shared contract (see
    :func:`kmax_deeplab.data.record.build_sample`): ``image`` float32 ``[3, H, W]`` RGB
    0..255, ``masks`` bool ``[M, H, W]``, ``labels`` int64 ``[M]`` train ids, ``is_crowd``
    bool ``[M]``, ``void`` bool ``[H, W]``, ``semantic`` int64 ``[H, W]`` (void = C),
    ``segment_ids`` int64 ``[M]``, ``image_id``, ``file_name``, ``height``, ``width``
    (original size) and ``valid_size`` (the image region inside a padded canvas).

    Args:
        image_dir: folder of the RGB images.
        panoptic_json: the COCO-panoptic JSON file.
        panoptic_dir: folder of the panoptic PNGs.
        meta: the dataset's :class:`~kmax_deeplab.data.catalog.DatasetMeta`.
        transforms: callable ``(record, rng) -> record`` applied jointly to image and ids
            (see :mod:`kmax_deeplab.data.transforms`); ``None`` keeps the original size. A
            transform with ``needs_second_sample = True`` (copy-paste,
            :class:`~kmax_deeplab.data.copy_paste.PanopticCopyPaste`) is called as
            ``(record, rng, second_record)`` with another sample drawn from the same ``rng``.
        on_bad_sample: ``"raise"`` (default) or ``"skip"``: warn, naming file and problem,
            and return the next valid sample instead.
        category_id_is_train_id: ``category_id`` in ``segments_info`` is the contiguous
            train id (Cityscapes ``--use-train-id`` files). ``None`` (default) decides from
            the JSON: true when it has neither ``images`` nor ``categories`` (deeplab2's
            files), or when its categories are the dataset's, by name, with ids 0..C-1
            (createPanopticImgs ``--use-train-id``).
        seed: when given, sample ``i`` draws its augmentation from ``(seed, epoch, i)`` only
            (see :meth:`set_epoch`), independent of workers; otherwise from torch's global RNG, which
            :func:`~kmax_deeplab.data.loader.build_dataloader` seeds per worker.

    Raises:
        PanopticDataError: the JSON file is missing, unreadable or has no ``annotations``.
        ValueError: bad ``on_bad_sample``.
    """

    def __init__(
        self,
        image_dir: str | Path,
        panoptic_json: str | Path,
        panoptic_dir: str | Path,
        meta: DatasetMeta,
        transforms: Transform | None = None,
        on_bad_sample: str = "raise",
        category_id_is_train_id: bool | None = None,
        seed: int | None = None,
    ) -> None:
        if on_bad_sample not in ("raise", "skip"):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        self.image_dir = Path(image_dir)
        self.panoptic_json = Path(panoptic_json)
        self.panoptic_dir = Path(panoptic_dir)
        self.meta = meta
        self.transforms = transforms
        self.on_bad_sample = on_bad_sample
        self.seed = seed
        data = _read_json(self.panoptic_json)
        if category_id_is_train_id is None:
            category_id_is_train_id = ("images" not in data and "categories" not in data) or (
                _categories_are_train_ids(data.get("categories"), meta))
        self.category_id_is_train_id = bool(category_id_is_train_id)
        images = {img["id"]: img for img in data.get("images", [])}
        self.records: list[dict[str, Any]] = []
        for k, ann in enumerate(data["annotations"]):
            for key in ("image_id", "file_name", "segments_info"):
                if key not in ann:
                    raise PanopticDataError(f"{self.panoptic_json}: annotation #{k} lacks {key!r}")
            img = images.get(ann["image_id"])
            if images and img is None:
                raise PanopticDataError(
                    f"{self.panoptic_json}: annotation #{k} (image_id {ann['image_id']!r}) has no "
                    f"entry in 'images'")
            self.records.append({
                "image_id": ann["image_id"],
                "image_file": img["file_name"] if img else _image_name_for(ann),
                "panoptic_file": ann["file_name"],
                "segments_info": ann["segments_info"],
                "json_height": img.get("height") if img else None,
                "json_width": img.get("width") if img else None,
            })
        self._bad: set[int] = set()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for seeded augmentation (only used when ``seed`` is given)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        """Path of the image of sample ``index`` (Cityscapes: also ``<city>/`` subfolders)."""
        name = self.records[index]["image_file"]
        path = self.image_dir / name
        if not path.exists() and name.endswith("_gtFine_leftImg8bit.png"):
            # createPanopticImgs names the image "<id>_gtFine_leftImg8bit.png"; the file is
            # "<id>_leftImg8bit.png".
            name = name[: -len("_gtFine_leftImg8bit.png")] + "_leftImg8bit.png"
            path = self.image_dir / name
        if not path.exists() and "_" in name:
            city = self.image_dir / name.split("_")[0] / name
            if city.exists():
                return city
        return path

    def load_record(self, index: int) -> dict[str, Any]:
        """Read and check sample ``index`` before any transform.

        Returns:
            dict with ``image`` uint8 ``[H, W, 3]``, ``panoptic`` int32 ``[H, W]`` segment
            ids (0 = void unless listed), ``segments`` (list of ``{"id", "category_id",
            "train_id", "iscrowd", "isthing"}``), ``image_id``, ``file_name``, ``height``,
            ``width``. (Compact dtypes: the transforms move few bytes; ``build_sample``
            makes the float32 image.)

        Raises:
            PanopticDataError: see the class docstring.
        """
        rec = self.records[index]
        image_path = self.image_path(index)
        png_path = self.panoptic_dir / rec["panoptic_file"]
        if not png_path.is_file():
            raise PanopticDataError(f"{png_path}: panoptic PNG not found (image_id {rec['image_id']!r})")
        image = load_rgb_image(image_path, dtype=np.uint8)
        ids = load_panoptic_png(png_path).astype(np.int32)  # ids < 256**3 fit
        h, w = image.shape[:2]
        if ids.shape != (h, w):
            raise PanopticDataError(
                f"{png_path}: size mismatch, panoptic PNG is {ids.shape[1]}x{ids.shape[0]} (WxH) but "
                f"image {image_path} is {w}x{h}")
        jh, jw = rec["json_height"], rec["json_width"]
        if jh is not None and jw is not None and (int(jh), int(jw)) != (h, w):
            raise PanopticDataError(
                f"{image_path}: size mismatch, image is {w}x{h} (WxH) but {self.panoptic_json} "
                f"says {jw}x{jh}")
        segments = self._check_segments(rec, ids, png_path)
        return {"image": image, "panoptic": ids, "segments": segments, "image_id": rec["image_id"],
                "file_name": str(image_path), "height": h, "width": w}

    def _check_segments(self, rec: dict, ids: np.ndarray, png_path: Path) -> list[dict[str, int]]:
        meta = self.meta
        segments, seen = [], set()
        for s in rec["segments_info"]:
            sid, cid = int(s["id"]), int(s["category_id"])
            if sid in seen:
                raise PanopticDataError(f"{png_path}: segment id {sid} listed twice in segments_info")
            seen.add(sid)
            if self.category_id_is_train_id:
                if not 0 <= cid < meta.num_classes:
                    raise PanopticDataError(
                        f"{png_path}: segment {sid} has unknown category (train id) {cid}; "
                        f"{meta.name} has train ids 0..{meta.num_classes - 1}")
                tid = cid
            else:
                if cid not in meta.category_id_to_train_id:
                    raise PanopticDataError(
                        f"{png_path}: segment {sid} has unknown category id {cid} for dataset {meta.name}")
                tid = meta.category_id_to_train_id[cid]
            segments.append({"id": sid, "category_id": meta.train_id_to_category_id[tid],
                             "train_id": tid, "iscrowd": int(bool(s.get("iscrowd", 0))),
                             "isthing": bool(meta.is_thing(tid))})
        present = set(np.unique(ids).tolist())
        unlisted = sorted(present - seen - {0})
        if unlisted:
            raise PanopticDataError(
                f"{png_path}: PNG id(s) {unlisted[:10]} not in segments_info of image {rec['image_id']!r}")
        absent = sorted(seen - present)
        if absent:
            raise PanopticDataError(
                f"{png_path}: segments_info id(s) {absent[:10]} missing from the PNG (image {rec['image_id']!r})")
        return segments

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([self.seed, self.epoch, index])
        # Torch's global RNG is seeded per worker by the DataLoader (from its generator).
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def get(self, index: int) -> dict[str, Any]:
        """Return sample ``index`` or raise :class:`PanopticDataError` (no skipping)."""
        record = self.load_record(index)
        if self.transforms is not None:
            rng = self._rng(index)
            if getattr(self.transforms, "needs_second_sample", False):
                record = self.transforms(record, rng, self._second_record(index, rng))
            else:
                record = self.transforms(record, rng)
        return build_sample(record, self.meta)

    def _second_record(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Record to paste onto sample ``index`` (copy-paste): BD's ``(index + U{0..n-1}) % n``.

        With ``on_bad_sample="skip"`` a bad draw is warned about, remembered and re-drawn.
        """
        n = len(self)
        for _ in range(n):
            j = (index + int(rng.integers(0, n))) % n
            if j in self._bad:
                continue
            try:
                return self.load_record(j)
            except PanopticDataError as e:
                if self.on_bad_sample == "raise":
                    raise PanopticDataError(f"copy-paste partner #{j} of sample #{index}: {e}") from e
                self._bad.add(j)
                warnings.warn(f"skipping bad copy-paste sample #{j}: {e}", RuntimeWarning, stacklevel=3)
        raise PanopticDataError(f"{self.panoptic_json}: no valid copy-paste sample found for #{index}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_bad_sample == "raise":
            return self.get(index)
        n = len(self)
        for k in range(n):
            j = (index + k) % n
            if j in self._bad:
                continue
            try:
                return self.get(j)
            except PanopticDataError as e:
                self._bad.add(j)
                warnings.warn(f"skipping bad sample #{j}: {e}", RuntimeWarning, stacklevel=2)
        raise PanopticDataError(f"{self.panoptic_json}: no valid sample left")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PanopticDataError(f"{path}: panoptic JSON not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PanopticDataError(f"{path}: unreadable panoptic JSON ({e})") from e
    if not isinstance(data, dict) or "annotations" not in data:
        raise PanopticDataError(f"{path}: not a COCO-panoptic JSON (no 'annotations')")
    return data


def _categories_are_train_ids(categories: Any, meta: DatasetMeta) -> bool:
    """The JSON's categories are the dataset's in train-id order with ids 0..C-1 where the
    dataset's category ids differ (createPanopticImgs ``--use-train-id``)."""
    if not isinstance(categories, list) or len(categories) != meta.num_classes:
        return False
    try:
        ids = [int(c["id"]) for c in categories]
        names = [str(c.get("name")) for c in categories]
    except (KeyError, TypeError, ValueError):
        return False
    return (ids == list(range(meta.num_classes)) and list(meta.train_id_to_category_id) != ids
            and names == list(meta.class_names))


def _image_name_for(ann: dict[str, Any]) -> str:
    """Image file name for an annotation without an ``images`` entry (Cityscapes layout)."""
    png = str(ann["file_name"])
    if png.endswith("_gtFine_panoptic.png"):
        return png[: -len("_gtFine_panoptic.png")] + "_leftImg8bit.png"
    return f"{ann['image_id']}_leftImg8bit.png"


def encode_panoptic(
    masks: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    is_crowd: Sequence[bool] | np.ndarray | torch.Tensor,
    meta: DatasetMeta,
    segment_ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Re-encode a target as a COCO-panoptic PNG image and its ``segments_info``.

    Args:
        masks: bool ``[M, H, W]`` non-overlapping segment masks.
        labels: int ``[M]`` train ids.
        is_crowd: bool ``[M]``.
        meta: dataset metadata (train id -> category id).
        segment_ids: int ``[M]`` ids to write (default ``1..M``); must be > 0 and unique.

    Returns:
        ``(rgb, segments_info)``: uint8 ``[H, W, 3]`` with ``id = R + 256G + 256²B`` and a
        list of ``{"id", "category_id", "iscrowd", "area", "bbox"}`` (bbox ``[x, y, w, h]``).

    Raises:
        ValueError: overlapping masks, or bad/duplicated segment ids.
    """
    masks = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks).astype(bool)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    crowd = np.asarray(is_crowd.cpu() if isinstance(is_crowd, torch.Tensor) else is_crowd, dtype=bool)
    m = masks.shape[0]
    ids = (np.arange(1, m + 1) if segment_ids is None else
           np.asarray(segment_ids.cpu() if isinstance(segment_ids, torch.Tensor) else segment_ids,
                      dtype=np.int64))
    if len(set(ids.tolist())) != m or (m and ids.min() <= 0):
        raise ValueError(f"segment ids must be unique and > 0, got {ids.tolist()}")
    if m and masks.sum(0).max() > 1:
        raise ValueError("masks overlap; a panoptic PNG holds one segment per pixel")
    pan = np.zeros(masks.shape[1:], dtype=np.int64)
    info = []
    for k in range(m):
        pan[masks[k]] = ids[k]
        ys, xs = np.nonzero(masks[k])
        bbox = ([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                if ys.size else [0, 0, 0, 0])
        info.append({"id": int(ids[k]), "category_id": int(meta.train_id_to_category_id[labels[k]]),
                     "iscrowd": int(crowd[k]), "area": int(masks[k].sum()), "bbox": bbox})
    return id_to_rgb(pan), info
