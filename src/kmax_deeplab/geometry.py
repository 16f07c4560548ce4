"""Input geometry declared by a model family: how images of any size become a model batch.

A family's row in :data:`kmax_deeplab.modeling.families.FAMILIES` returns one of these objects
for a config; the predictor (and, for training, the transforms and ``collate_panoptic``) read
it, so nothing above the model hard-codes a canvas or a normalisation.

* :class:`FixedCanvas` (kMaX, MaX-DeepLab; spec ``kmax_deeplab.md`` §1 test time): the longer
  side is resized to the canvas and the image is padded right/bottom with the mean
  (127.5 grey, i.e. 0 after the model's ``(x - 127.5) / 127.5``) onto exactly the canvas.

Images stay RGB 0..255 float32: the model normalises with :attr:`pixel_mean` / :attr:`pixel_std`
itself (DESIGN.md "Data contracts").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["FixedCanvas", "fit_size", "resize_and_pad"]


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
