"""Semantic-segmentation data: image + label-PNG datasets and mmseg's training pipeline.

Datasets (mmsegmentation 0.30 ``CustomDataset`` / ``ADE20KDataset`` semantics):

* :class:`SemanticSegDataset`: any folder of images with a parallel folder of
  single-channel label PNGs (same relative path, image suffix replaced by the label
  suffix) and a class list; optional ``reduce_zero_label``.
* :class:`ADE20KSemanticDataset`: ``ADEChallengeData2016/images/{training,validation}/*.jpg``
  with ``annotations/.../*.png``; 150 classes; ``reduce_zero_label``: raw 0 ("other")
  becomes the ignore value 255 and raw ``v`` becomes class ``v - 1``.

A sample is a record ``{"image": uint8 [H, W, 3] RGB, "sem_seg": int64 [H, W] class ids
(255 = ignore), "file_name", "image_id", "height", "width"}``.

Training transforms (mmseg 0.30 ``mmseg/datasets/pipelines/transforms.py``, the
ADE20K pipeline of ``configs/_base_/datasets/ade20k.py``): :class:`RandomResize`
(ratio 0.5-2.0 of the 2048x512 scale, aspect kept), :class:`RandomCropCatMax` (512x512,
``cat_max_ratio`` 0.75, up to 10 re-draws), :class:`RandomFlip` (p 0.5),
:class:`PhotoMetricDistortion`, then :class:`PadSemantic` to the crop (image 0, label
255; ``valid_size`` tells the model which pixels are real, the K-Net model sets the rest
to 0 after normalisation as mmseg's ``Pad`` after ``Normalize`` does). Every random choice
comes from the ``numpy.random.Generator`` passed in.

Deviations from mmseg (which uses OpenCV): images are resized with PyTorch's bilinear
interpolation (``align_corners=False``, no antialiasing: OpenCV ``INTER_LINEAR``'s
sampling grid; OpenCV's fixed-point uint8 arithmetic can differ by one level); labels use
OpenCV ``INTER_NEAREST``'s index rule exactly (``floor(x * src / dst)``). The saturation
and hue steps use continuous HSV (see :mod:`kmax_deeplab.data.photometric`), not
OpenCV's 8-bit HSV image, so they differ from mmseg by a few levels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from kmax_deeplab.data.image_io import PanopticDataError, load_rgb_image
from kmax_deeplab.data.photometric import _convert, saturate_and_shift_hue
from kmax_deeplab.evaluation.semantic import reduce_zero_label_map as reduce_zero_label

__all__ = [
    "IGNORE_INDEX", "SemanticDataError", "SemanticSegDataset", "ADE20KSemanticDataset",
    "load_label_png", "reduce_zero_label", "rescale_size", "resize_label_nearest", "resize_image_bilinear",
    "RandomResize", "RandomCropCatMax", "RandomFlip", "PhotoMetricDistortion", "PadSemantic",
    "build_semantic_transforms",
]

IGNORE_INDEX = 255
"""Label value ignored by the loss and the metric (mmseg ``ignore_index``)."""

Record = dict[str, Any]


class SemanticDataError(PanopticDataError):
    """Bad semantic dataset on disk (missing folder or label, unreadable or multi-channel PNG)."""


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

def load_label_png(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG (mode ``L``, ``P`` palette indices, ``I;16`` or ``I``)
    as int64 ``[H, W]`` raw values (mmseg reads with ``flag='unchanged'``, Pillow backend).

    Raises:
        SemanticDataError: missing/unreadable file or a multi-channel (e.g. RGB) image.
    """
    path = Path(path)
    if not path.is_file():
        raise SemanticDataError(f"{path}: label file not found")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I;16", "I", "1"):
                raise SemanticDataError(
                    f"{path}: label PNG has mode {im.mode}, expected one channel of class ids (L, P, I;16)")
            arr = np.array(im)
    except SemanticDataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise SemanticDataError(f"{path}: unreadable label PNG ({e})") from e
    return arr.astype(np.int64)


class SemanticSegDataset(Dataset):
    """Images with parallel single-channel label PNGs and a class list.

    Pairs every ``img_dir/**/<name><img_suffix>`` with ``ann_dir/**/<name><seg_map_suffix>``
    (sorted by relative path, as mmseg ``CustomDataset.load_annotations``).

    Args:
        img_dir: image folder.
        ann_dir: label folder, or None for images only (``sem_seg`` absent).
        classes: class names, in label-value order (after ``reduce_zero_label``).
        img_suffix, seg_map_suffix: file name endings.
        reduce_zero_label: apply :func:`reduce_zero_label` to the raw labels.
        palette: optional RGB colour per class.
        transforms: ``(record, rng) -> record`` applied to each sample.
        seed: base seed; sample ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
    Raises:
        SemanticDataError: a folder is missing, holds no image, or an image has no label.
    """

    def __init__(self, img_dir: str | Path, ann_dir: str | Path | None, classes: Sequence[str], *,
                 img_suffix: str = ".jpg", seg_map_suffix: str = ".png", reduce_zero_label: bool = False,
                 palette: Sequence[Sequence[int]] | None = None,
                 transforms: Callable[[Record, np.random.Generator], Record] | None = None,
                 seed: int = 0) -> None:
        self.img_dir = Path(img_dir)
        self.ann_dir = None if ann_dir is None else Path(ann_dir)
        self.classes = tuple(classes)
        if not self.classes:
            raise ValueError("SemanticSegDataset: classes must not be empty")
        if palette is not None and len(palette) != len(self.classes):
            raise ValueError(f"SemanticSegDataset: palette has {len(palette)} colours for "
                             f"{len(self.classes)} classes")
        self.palette = None if palette is None else tuple(tuple(int(v) for v in c) for c in palette)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.transforms = transforms
        self.seed = int(seed)
        self.epoch = 0
        if not self.img_dir.is_dir():
            raise SemanticDataError(f"{self.img_dir}: image folder not found")
        if self.ann_dir is not None and not self.ann_dir.is_dir():
            raise SemanticDataError(f"{self.ann_dir}: annotation folder not found")
        images = sorted(p for p in self.img_dir.rglob(f"*{img_suffix}") if p.is_file())
        if not images:
            raise SemanticDataError(f"{self.img_dir}: no '*{img_suffix}' image found")
        self.samples: list[tuple[Path, Path | None]] = []
        for p in images:
            rel = p.relative_to(self.img_dir).as_posix()[: -len(img_suffix)]
            ann = None
            if self.ann_dir is not None:
                ann = self.ann_dir / f"{rel}{seg_map_suffix}"
                if not ann.is_file():
                    raise SemanticDataError(f"{p}: no label {ann}")
            self.samples.append((p, ann))

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (the trainer calls this every epoch)."""
        self.epoch = int(epoch)

    def load(self, index: int) -> Record:
        """The untransformed record of sample ``index`` (see the module doc)."""
        img_path, ann_path = self.samples[index]
        image = load_rgb_image(img_path, dtype=np.uint8)
        rec: Record = {"image": image, "file_name": str(img_path), "image_id": img_path.stem,
                       "height": image.shape[0], "width": image.shape[1]}
        if ann_path is not None:
            label = load_label_png(ann_path)
            if label.shape != image.shape[:2]:
                raise SemanticDataError(f"{ann_path}: label is {label.shape[1]}x{label.shape[0]}, "
                                        f"image {img_path.name} is {image.shape[1]}x{image.shape[0]}")
            rec["sem_seg"] = reduce_zero_label(label) if self.reduce_zero_label else label
        return rec

    def __getitem__(self, index: int) -> Record:
        rec = self.load(index)
        if self.transforms is not None:
            rec = self.transforms(rec, np.random.default_rng([self.seed, self.epoch, index]))
        return rec


class ADE20KSemanticDataset(SemanticSegDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes, ``reduce_zero_label``.

    Class names and colours are the catalog's ADE20K table (the same order and palette as
    mmseg's ``ADE20KDataset``; some names are the longer Mask2Former spellings).

    Args:
        root: the ``ADEChallengeData2016`` folder (or a folder that contains it).
        split: ``"training"`` or ``"validation"``.
        **kwargs: passed to :class:`SemanticSegDataset` (``transforms``, ``seed``).
    Raises:
        ValueError: unknown split.
        SemanticDataError: the folders are missing (see :class:`SemanticSegDataset`).
    """

    def __init__(self, root: str | Path, split: str = "training", **kwargs: Any) -> None:
        from kmax_deeplab.data.catalog import get_dataset_meta

        if split not in ("training", "validation"):
            raise ValueError(f"ADE20KSemanticDataset: split must be 'training' or 'validation', got {split!r}")
        root = Path(root)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        meta = get_dataset_meta("ade20k")
        super().__init__(root / "images" / split, root / "annotations" / split,
                         [c["name"] for c in meta.categories], img_suffix=".jpg", seg_map_suffix=".png",
                         reduce_zero_label=True, palette=[c["color"] for c in meta.categories], **kwargs)


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------

def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size`` with a (long, short) bound: the largest aspect-kept size
    inside ``scale``: ``f = min(max(scale) / max(h, w), min(scale) / min(h, w))``,
    ``(int(h f + 0.5), int(w f + 0.5))``. Returns (new_h, new_w)."""
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def _nearest_src(n_in: int, n_out: int) -> np.ndarray:
    # OpenCV resizeNN: sx = floor(dx * ifx), ifx = 1 / (dst / src), clamped.
    ifx = 1.0 / (n_out / n_in)
    return np.minimum(np.floor(np.arange(n_out) * ifx).astype(np.int64), n_in - 1)


def resize_label_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label map ``[H, W]`` to ``size`` = (h, w) with OpenCV ``INTER_NEAREST``'s rule."""
    return label[np.ix_(_nearest_src(label.shape[0], size[0]), _nearest_src(label.shape[1], size[1]))]


def resize_image_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 ``[H, W, 3]`` to ``size`` = (h, w): bilinear, half-pixel centres, no
    antialiasing (OpenCV ``INTER_LINEAR``'s grid), rounded to uint8."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


class RandomResize:
    """mmseg ``Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)``.

    ``ratio ~ U[ratio_range)``, bound ``(int(scale[0] * ratio), int(scale[1] * ratio))``,
    size by :func:`rescale_size`. ``ratio_range=None``: the fixed bound ``scale`` (the
    test-time ``Resize``).
    """

    def __init__(self, scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] | None = (0.5, 2.0)):
        if ratio_range is not None and ratio_range[0] > ratio_range[1]:
            raise ValueError(f"RandomResize: ratio_range {ratio_range} has min > max")
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = None if ratio_range is None else (float(ratio_range[0]), float(ratio_range[1]))

    def __call__(self, record: Record, rng: np.random.Generator) -> Record:
        bound = self.scale
        if self.ratio_range is not None:
            lo, hi = self.ratio_range
            r = rng.random() * (hi - lo) + lo
            bound = (int(self.scale[0] * r), int(self.scale[1] * r))
        h, w = record["image"].shape[:2]
        size = rescale_size(h, w, bound)
        out = dict(record)
        out["image"] = resize_image_bilinear(record["image"], size)
        if "sem_seg" in record:
            out["sem_seg"] = resize_label_nearest(record["sem_seg"], size)
        return out


class RandomCropCatMax:
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``: a random window of at most
    ``crop_size`` = (h, w); while the window's most frequent non-ignored class covers
    ``>= cat_max_ratio`` of its non-ignored pixels, or it holds fewer than 2 classes, draw
    again, up to 10 times (the 11th window is kept unchecked).
    """

    def __init__(self, crop_size: tuple[int, int] = (512, 512), cat_max_ratio: float = 0.75,
                 ignore_index: int = IGNORE_INDEX):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        if min(self.crop_size) <= 0:
            raise ValueError(f"RandomCropCatMax: crop_size must be positive, got {crop_size}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)

    def _bbox(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        top = int(rng.integers(0, max(h - self.crop_size[0], 0) + 1))
        left = int(rng.integers(0, max(w - self.crop_size[1], 0) + 1))
        return top, top + self.crop_size[0], left, left + self.crop_size[1]

    def __call__(self, record: Record, rng: np.random.Generator) -> Record:
        h, w = record["image"].shape[:2]
        y1, y2, x1, x2 = self._bbox(h, w, rng)
        if self.cat_max_ratio < 1.0 and "sem_seg" in record:
            for _ in range(10):
                labels, cnt = np.unique(record["sem_seg"][y1:y2, x1:x2], return_counts=True)
                cnt = cnt[labels != self.ignore_index]
                if len(cnt) > 1 and cnt.max() / cnt.sum() < self.cat_max_ratio:
                    break
                y1, y2, x1, x2 = self._bbox(h, w, rng)
        out = dict(record)
        out["image"] = record["image"][y1:y2, x1:x2]
        if "sem_seg" in record:
            out["sem_seg"] = record["sem_seg"][y1:y2, x1:x2]
        return out


class RandomFlip:
    """mmseg ``RandomFlip(prob)``: horizontal flip of image and label with probability ``prob``."""

    def __init__(self, prob: float = 0.5):
        self.prob = float(prob)

    def __call__(self, record: Record, rng: np.random.Generator) -> Record:
        if not rng.random() < self.prob:
            return record
        out = dict(record)
        out["image"] = np.ascontiguousarray(record["image"][:, ::-1])
        if "sem_seg" in record:
            out["sem_seg"] = np.ascontiguousarray(record["sem_seg"][:, ::-1])
        return out


class PhotoMetricDistortion:
    """mmseg ``PhotoMetricDistortion`` on the image of a record (labels untouched).

    In order: brightness (p 0.5, ``+U(-32, 32)``); a coin picks contrast first or last;
    saturation (p 0.5, ``x U(0.5, 1.5)``); hue (p 0.5, ``+U{-18..17}`` 8-bit hue steps
    mod 180: mmseg draws ``numpy.random.randint(-18, 18)``, excluding 18); contrast (p 0.5,
    ``x U(0.5, 1.5)``) at its place. Brightness/contrast clip and truncate to uint8
    exactly as mmseg's ``convert``; saturation/hue: see the module doc (continuous HSV).
    """

    def __init__(self, brightness_delta: float = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18):
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = int(hue_delta)

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def __call__(self, record: Record, rng: np.random.Generator) -> Record:
        img = record["image"]
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"PhotoMetricDistortion: expected uint8 [H, W, 3], got {img.dtype} {img.shape}")
        if rng.integers(2):
            img = _convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(rng.integers(2))
        if contrast_first:
            img = self._contrast(img, rng)
        if rng.integers(2):
            img = saturate_and_shift_hue(img, rng.uniform(*self.saturation_range), None)
        if rng.integers(2):
            img = saturate_and_shift_hue(img, None, int(rng.integers(-self.hue_delta, self.hue_delta)))
        if not contrast_first:
            img = self._contrast(img, rng)
        out = dict(record)
        out["image"] = img
        return out


class PadSemantic:
    """mmseg ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)``: pad bottom/right to
    ``size`` = (h, w); image 0, label 255; sets ``valid_size`` (the unpadded (h, w)).

    Raises:
        ValueError: the record is larger than ``size``.
    """

    def __init__(self, size: tuple[int, int] = (512, 512), seg_pad_val: int = IGNORE_INDEX):
        self.size = (int(size[0]), int(size[1]))
        self.seg_pad_val = int(seg_pad_val)

    def __call__(self, record: Record, rng: np.random.Generator | None = None) -> Record:
        h, w = record["image"].shape[:2]
        if h > self.size[0] or w > self.size[1]:
            raise ValueError(f"PadSemantic: cannot pad {h}x{w} to smaller {self.size[0]}x{self.size[1]}")
        out = dict(record)
        image = np.zeros((*self.size, 3), dtype=record["image"].dtype)
        image[:h, :w] = record["image"]
        out["image"] = image
        if "sem_seg" in record:
            label = np.full(self.size, self.seg_pad_val, dtype=np.int64)
            label[:h, :w] = record["sem_seg"]
            out["sem_seg"] = label
        out["valid_size"] = (h, w)
        return out


def build_semantic_transforms(crop_size: tuple[int, int] = (512, 512), scale: tuple[int, int] = (2048, 512),
                              ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                              flip_prob: float = 0.5, photometric: bool = True):
    """The mmseg ADE20K training pipeline after loading (``configs/_base_/datasets/ade20k.py``;
    Swin-L 640: ``crop_size=(640, 640)``, ``scale=(2560, 640)``).

    Returns:
        ``(record, rng) -> record``: resize, crop, flip, photometric distortion, pad.
    """
    from kmax_deeplab.data.transforms import Compose

    steps: list[Callable[[Record, np.random.Generator], Record]] = [
        RandomResize(scale, ratio_range), RandomCropCatMax(crop_size, cat_max_ratio), RandomFlip(flip_prob)]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps.append(PadSemantic(crop_size))
    return Compose(steps)
