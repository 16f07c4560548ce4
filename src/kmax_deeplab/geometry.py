"""Input geometry declared by a model family: how images of any size become a model batch.

A family's row in :data:`kmax_deeplab.modeling.families.FAMILIES` returns one of these objects
for a config; the predictor (and, for training, the transforms and ``collate_panoptic``) read
it, so nothing above the model hard-codes a canvas or a normalisation.

* :class:`FixedCanvas` (kMaX, MaX-DeepLab; spec ``kmax_deeplab.md`` §1 test time): the image is
  resized by the reference's own test-time rule (:func:`inference_size`: bytedance = detectron2's
  ``ResizeShortestEdge`` with ``int(x + 0.5)``, deeplab2 = ``resize_to_range`` with float32
  ``floor``) and padded right/bottom with the mean (127.5 grey, i.e. 0 after the model's
  ``(x - 127.5) / 127.5``) onto exactly the canvas;
  training crops are the canvas (large-scale jitter), so batches need no padding.
* :class:`ResizePad` (K-Net, spec ``knet.md``; mmdet ``Resize(img_scale=(1333, 800),
  keep_ratio=True)`` + ``Pad(size_divisor=32)`` + ImageNet mean/std): each image is resized
  to fit short x long, and a batch is padded to its largest image rounded up to a multiple
  of 32 with the mean (0 after normalisation); variable sizes in training too, the padding
  void in the targets (``collate_panoptic``).

Each geometry gives the predictor :meth:`preprocess`, and training its ``transforms`` and
``collate``.

Images stay RGB 0..255 float32: the model normalises with :attr:`pixel_mean` / :attr:`pixel_std`
itself (DESIGN.md "Data contracts").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["FixedCanvas", "IMAGENET_MEAN", "IMAGENET_STD", "ResizePad", "TEST_RESIZE_RULES",
           "bytedance_inference_size", "deeplab2_inference_size", "fit_size", "inference_resize_limits",
           "inference_size", "resize_and_pad"]

#: torchvision / mmdet ImageNet statistics in 0..255 units (RGB).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

#: Test-time resize rules, one per reference (``data.test_resize``; default: ``model.reference``).
TEST_RESIZE_RULES = ("bytedance", "deeplab2")


def bytedance_inference_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge(min_size, max_size)`` output size (bytedance's test resize).

    The shorter side goes to ``min_size`` unless the longer one would pass ``max_size``, in which
    case the longer side goes to ``max_size``; both sides are rounded half up, ``int(x + 0.5)``
    (detectron2 ``data/transforms/augmentation_impl.py``, ``ResizeShortestEdge.get_output_shape``,
    fed ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``: 1281/1281 for COCO and ADE20K, 1025/2049 for
    Cityscapes in bytedance's configs). Python floats (float64), as detectron2 computes.
    """
    size = float(min_size)
    scale = size / min(height, width)
    new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def deeplab2_inference_size(height: int, width: int, min_size: Sequence[int] | None,
                            max_size: Sequence[int]) -> tuple[int, int]:
    """deeplab2's ``resize_to_range`` output size at inference (no ``resize_factor``).

    First both sides are scaled by ``max(min_h / h, min_w / w)`` (when ``min_size`` is given),
    then by ``min(max_h / h', max_w / w', 1)``; each time a side becomes
    ``floor(float32(side) * float32(scale))`` (deeplab2 ``data/preprocessing/preprocess_utils.py``:
    ``_resize_to_match_min_size``, ``_resize_to_fit_max_size``, ``_scale_dim``; the ratios are
    float64 divisions, as TF's ``truediv`` of int32 shapes gives). ``max_size`` defaults to the crop
    size at inference (``input_preprocessing._update_max_resize_value``); deeplab2's configs give
    ``min_resize_value = max_resize_value = crop`` for COCO and ADE20K and 0 (none) for Cityscapes.
    """
    def scale_dim(side: int, factor: float) -> int:
        return int(np.floor(np.float32(side) * np.float32(factor)))

    h, w = int(height), int(width)
    if min_size:
        factor = max(min_size[0] / h, min_size[1] / w)
        h, w = scale_dim(h, factor), scale_dim(w, factor)
    factor = min(float(np.float32(min(max_size[0] / h, max_size[1] / w))), 1.0)
    return scale_dim(h, factor), scale_dim(w, factor)


def inference_resize_limits(rule: str, dataset: str, canvas: Sequence[int]) -> tuple[int, int]:
    """``(min_size, max_size)`` each reference's configs use at test time for a canvas.

    bytedance: ``MIN_SIZE_TEST = min(IMAGE_SIZE)``, ``MAX_SIZE_TEST = max(IMAGE_SIZE)`` in all its
    configs (COCO/ADE20K 1281/1281, Cityscapes 1025/2049). deeplab2: ``min_resize_value`` = the crop
    (COCO, ADE20K) or 0 (Cityscapes), ``max_resize_value`` = the crop (0 in the Cityscapes configs,
    which inference replaces by the crop). The deeplab2 sizes are square here, as in its configs.
    """
    lo, hi = min(int(s) for s in canvas), max(int(s) for s in canvas)
    if rule == "bytedance":
        return lo, hi
    if rule == "deeplab2":
        return (0 if dataset == "cityscapes" else lo), hi
    raise ValueError(f"data.test_resize must be one of {TEST_RESIZE_RULES}, got {rule!r}")


def inference_size(height: int, width: int, canvas: Sequence[int], *, rule: str = "bytedance",
                   min_size: int = -1, max_size: int = -1, dataset: str = "coco") -> tuple[int, int]:
    """Size a ``height x width`` image is resized to at test time, by the reference's own rule.

    Args:
        height, width: the original image size (pixels).
        canvas: ``(Hc, Wc)``, the model's ``image_size``.
        rule: ``"bytedance"`` (:func:`bytedance_inference_size`) or ``"deeplab2"``
            (:func:`deeplab2_inference_size`; an explicit ``max_size`` is a square limit, the
            default and 0 mean the crop, i.e. the canvas).
        min_size / max_size: the rule's limits; -1 = the reference's own value for ``dataset``
            and ``canvas`` (:func:`inference_resize_limits`).
        dataset: catalog name, for the defaults.

    Returns:
        ``(Hv, Wv)``, at most the canvas. When the rule gives a side larger than the canvas (a
        non-square canvas and an image of the other orientation, which both references would feed
        unpadded and fail on), the image is scaled to fit instead, with the rule's rounding.

    Raises:
        ValueError: an unknown rule or a non-positive image size.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    hc, wc = int(canvas[0]), int(canvas[1])
    lo, hi = inference_resize_limits(rule, dataset, (hc, wc))
    lo = lo if min_size < 0 else int(min_size)
    hi = hi if max_size < 0 else int(max_size)
    if rule == "bytedance":
        size = bytedance_inference_size(height, width, lo, hi)
    else:
        # deeplab2's max_resize_value defaults to the crop (both sides) at inference
        limit = (int(max_size), int(max_size)) if max_size > 0 else (hc, wc)
        size = deeplab2_inference_size(height, width, (lo, lo) if lo > 0 else None, limit)
    if size[0] <= hc and size[1] <= wc:
        return size
    scale = min(hc / height, wc / width)
    if rule == "bytedance":
        fitted = int(height * scale + 0.5), int(width * scale + 0.5)
    else:
        fitted = int(np.floor(np.float32(height) * np.float32(scale))), int(np.floor(np.float32(width) * np.float32(scale)))
    return min(hc, max(1, fitted[0])), min(wc, max(1, fitted[1]))


def fit_size(height: int, width: int, canvas: Sequence[int]) -> tuple[int, int]:
    """The old test-time heuristic, kept for callers of ``engine.predictor.fit_size``: no reference's rule.

    ``round(side * s)`` (half to even) with ``s = min(Hc/H, Wc/W)``, and an image within one pixel
    of the canvas kept as is. Both references differ (issue 9): a 480x640 photo at 641 is fed as
    481x641 by both, 500x1000 at 641 as 321 rows by bytedance, and bytedance resizes Cityscapes
    1024x2048 to 1025x2049. The predictor uses :func:`inference_size`.

    Returns:
        ``(Hv, Wv)``, at least 1 and at most the canvas.
    """
    scale = min(canvas[0] / height, canvas[1] / width)
    limiting = 0 if canvas[0] / height <= canvas[1] / width else 1
    if scale >= 1 and canvas[limiting] - (height, width)[limiting] <= 1:
        return height, width
    return (min(canvas[0], max(1, round(height * scale))),
            min(canvas[1], max(1, round(width * scale))))


def resize_and_pad(images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
                   batch_size: tuple[int, int], pad_value: Sequence[float] | float) -> torch.Tensor:
    """Bilinearly resize each RGB uint8 image to ``sizes[i]`` and pad it onto ``batch_size``.

    Args:
        images: ``[H, W, 3]`` uint8 arrays.
        sizes: the ``(Hv, Wv)`` of each resized image (each within ``batch_size``).
        batch_size: ``(Hb, Wb)`` of the returned batch.
        pad_value: one value or one per RGB channel, in 0..255 units.

    Returns:
        ``[B, 3, Hb, Wb]`` float32, image ``i`` in the top-left ``sizes[i]`` corner.
    """
    hb, wb = int(batch_size[0]), int(batch_size[1])
    batch = torch.empty((len(images), 3, hb, wb), dtype=torch.float32)
    batch[:] = torch.as_tensor(pad_value, dtype=torch.float32).reshape(-1, 1, 1)
    for i, (img, (hv, wv)) in enumerate(zip(images, sizes)):
        if (hv, wv) != img.shape[:2]:
            img = np.array(Image.fromarray(img).resize((wv, hv), Image.BILINEAR))
        # [Hv, Wv, 3] uint8 -> [3, Hv, Wv] float32
        batch[i, :, :hv, :wv] = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return batch


@dataclass(frozen=True)
class FixedCanvas:
    """A model that takes exactly one ``canvas`` size (kMaX: axial position tables are fixed).

    Attributes:
        canvas: ``(Hc, Wc)``, the model's ``image_size``.
        resize_rule / min_size / max_size / dataset: the test-time resize (:func:`inference_size`).
        pixel_mean / pixel_std: the model's normalisation, RGB 0..255 units (127.5 each:
            ``(x - 127.5) / 127.5``); padding uses ``pixel_mean`` (0 after normalisation).
        mask_stride: output stride of the predicted masks (4).
    """

    canvas: tuple[int, int]
    pixel_mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    pixel_std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    mask_stride: int = 4
    resize_rule: str = "bytedance"
    min_size: int = -1
    max_size: int = -1
    dataset: str = "coco"

    def test_size(self, height: int, width: int) -> tuple[int, int]:
        """``(Hv, Wv)`` an ``height x width`` image is resized to (:func:`inference_size`)."""
        return inference_size(height, width, self.canvas, rule=self.resize_rule, min_size=self.min_size,
                              max_size=self.max_size, dataset=self.dataset)

    def batch_size(self, valid_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """Spatial size of the batch holding images of ``valid_sizes``: always the canvas."""
        return (int(self.canvas[0]), int(self.canvas[1]))

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """RGB uint8 images of any sizes -> ``([B, 3, Hc, Wc]`` float32 0..255, valid sizes).

        The pad value is :attr:`pixel_mean` (127.5), on the right and bottom.
        """
        valid = [self.test_size(img.shape[0], img.shape[1]) for img in images]
        pad = self.pixel_mean[0] if len(set(self.pixel_mean)) == 1 else self.pixel_mean
        return resize_and_pad(images, valid, self.batch_size(valid), pad), valid

    def transforms(self, data_cfg, is_train: bool):
        """Training: large-scale jitter crops of ``data.crop_size``; test: resize by :meth:`test_size`
        (the reference's rule, as the predictor) + pad (data/transforms)."""
        from kmax_deeplab.data.transforms import ResizeLongestAndPad, build_transforms

        if not is_train:
            return ResizeLongestAndPad(self.canvas, pad_value=self.pixel_mean[0], size_fn=self.test_size)
        return build_transforms(data_cfg, is_train=is_train)

    def collate(self, num_classes: int):
        """The batch collate: every sample already has the canvas size, so a plain stack."""
        from kmax_deeplab.data.loader import collate_panoptic

        return collate_panoptic


@dataclass(frozen=True)
class ResizePad:
    """Resize to fit ``short x long`` (aspect kept), pad the batch to a multiple of ``size_divisor``.

    Attributes:
        short / long: test-time target (K-Net: 800 / 1333), :func:`~kmax_deeplab.data.transforms.short_long_size`.
        size_divisor: batch sides are multiples of this (32).
        train_short: training short side drawn uniformly from this range (K-Net (640, 800)),
            with horizontal flips when ``data.flip``.
        pixel_mean / pixel_std: ImageNet statistics, RGB 0..255 units; padding uses the mean.
        mask_stride: output stride of the predicted masks (4).
    """

    short: int = 800
    long: int = 1333
    size_divisor: int = 32
    train_short: tuple[int, int] = (640, 800)
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    mask_stride: int = 4

    def test_size(self, height: int, width: int) -> tuple[int, int]:
        """``(Hv, Wv)`` of an ``height x width`` image at test time."""
        from kmax_deeplab.data.transforms import short_long_size

        return short_long_size(height, width, self.short, self.long)

    def batch_size(self, valid_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """The largest of ``valid_sizes``, each side rounded up to a multiple of ``size_divisor``."""
        d = int(self.size_divisor)
        return (-(-max(h for h, _ in valid_sizes) // d) * d, -(-max(w for _, w in valid_sizes) // d) * d)

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """RGB uint8 images -> ``([B, 3, Hb, Wb]`` float32 0..255 padded with the mean, valid sizes)."""
        valid = [self.test_size(img.shape[0], img.shape[1]) for img in images]
        return resize_and_pad(images, valid, self.batch_size(valid), self.pixel_mean), valid

    def transforms(self, data_cfg, is_train: bool):
        """Training: random short side in ``train_short`` (+ flip); test: ``short x long``; no padding."""
        from kmax_deeplab.data.transforms import ResizeShortLong

        if is_train:
            return ResizeShortLong(self.train_short, self.long, flip=bool(getattr(data_cfg, "flip", True)))
        return ResizeShortLong(self.short, self.long)

    def collate(self, num_classes: int):
        """``collate_panoptic`` padding to a multiple of ``size_divisor``, padding void (semantic C)."""
        from functools import partial

        from kmax_deeplab.data.loader import collate_panoptic

        return partial(collate_panoptic, size_divisor=self.size_divisor, pad_value=self.pixel_mean,
                       ignore_label=int(num_classes))
