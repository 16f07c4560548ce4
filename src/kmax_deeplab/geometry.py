"""Input geometry declared by a model family: how images of any size become a model batch.

A family's row in :data:`kmax_deeplab.modeling.families.FAMILIES` returns one of these objects
for a config; the predictor (and, for training, the transforms and ``collate_panoptic``) read
it, so nothing above the model hard-codes a canvas or a normalisation.

* :class:`FixedCanvas` (kMaX, MaX-DeepLab; spec ``kmax_deeplab.md`` §1 test time): the longer
  side is resized to the canvas and the image is padded right/bottom with the mean
  (127.5 grey, i.e. 0 after the model's ``(x - 127.5) / 127.5``) onto exactly the canvas;
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

__all__ = ["FixedCanvas", "IMAGENET_MEAN", "IMAGENET_STD", "ResizePad", "fit_size", "resize_and_pad"]

#: torchvision / mmdet ImageNet statistics in 0..255 units (RGB).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def fit_size(height: int, width: int, canvas: Sequence[int]) -> tuple[int, int]:
    """Size of an ``height x width`` image scaled to fit ``canvas`` (longer side to the canvas).

    Returns:
        ``(Hv, Wv)``: ``round(side * s)`` with ``s = min(Hc/H, Wc/W)``, at least 1 and at most
        the canvas. For a square canvas this is "longer side = canvas side", BD's COCO test
        resize (MIN/MAX_SIZE_TEST = 1281). An image that fits and is within one pixel of the
        canvas on the limiting side is kept as is: a 32k+1 canvas holds a 32k image (Cityscapes
        1024x2048 in 1025x2049 is only padded, as in BD and deeplab2).
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
        pixel_mean / pixel_std: the model's normalisation, RGB 0..255 units (127.5 each:
            ``(x - 127.5) / 127.5``); padding uses ``pixel_mean`` (0 after normalisation).
        mask_stride: output stride of the predicted masks (4).
    """

    canvas: tuple[int, int]
    pixel_mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    pixel_std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    mask_stride: int = 4

    def test_size(self, height: int, width: int) -> tuple[int, int]:
        """``(Hv, Wv)`` an ``height x width`` image is resized to (:func:`fit_size`)."""
        return fit_size(height, width, self.canvas)

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
        """Training: large-scale jitter crops of ``data.crop_size``; test: resize + pad (data/transforms)."""
        from kmax_deeplab.data.transforms import build_transforms

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
