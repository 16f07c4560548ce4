"""Input geometry of the semantic K-Net: mmseg's ADE20K test pipeline.

mmseg 0.30 ``configs/_base_/datasets/ade20k.py`` test pipeline: ``Resize(img_scale=(2048, 512),
keep_ratio=True)`` (mmcv ``rescale_size``: ``s = min(2048 / long side, 512 / short side)``,
each side ``int(side * s + 0.5)``), ``Normalize`` with ImageNet mean/std in RGB 0..255
(``img_norm_cfg``, ``to_rgb=True``), no padding. The model normalises itself; a batch of
different sizes is padded bottom/right with the mean (0 after normalisation, as mmseg's
``Pad`` after ``Normalize`` fills 0). Images are resized with
:func:`~kmax_deeplab.data.semantic.resize_image_bilinear` (OpenCV ``INTER_LINEAR``'s grid, no
antialiasing, as mmcv's cv2 backend; within one level of OpenCV's fixed-point result).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kmax_deeplab.geometry import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SemanticResize"]


@dataclass(frozen=True)
class SemanticResize:
    """Resize to fit ``short x long`` keeping the aspect ratio; batches padded to their largest image.

    Attributes:
        short / long: the test scale (512 / 2048; Swin-L 640: 640 / 2560).
        pixel_mean / pixel_std: ImageNet statistics, RGB 0..255 (mmseg ``img_norm_cfg``).
    """

    short: int = 512
    long: int = 2048
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def test_size(self, height: int, width: int) -> tuple[int, int]:
        """``(Hv, Wv)`` an ``height x width`` image is fed at (mmcv ``rescale_size``)."""
        from kmax_deeplab.data.transforms import short_long_size

        return short_long_size(height, width, self.short, self.long)

    def batch_size(self, valid_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """The largest height and width of ``valid_sizes`` (no rounding)."""
        return max(h for h, _ in valid_sizes), max(w for _, w in valid_sizes)

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """RGB uint8 ``[H, W, 3]`` images -> (``[B, 3, Hb, Wb]`` float32 0..255 padded with the mean,
        the valid ``(Hv, Wv)`` of each)."""
        from kmax_deeplab.data.semantic import resize_image_bilinear

        valid = [self.test_size(img.shape[0], img.shape[1]) for img in images]
        hb, wb = self.batch_size(valid)
        batch = torch.empty((len(images), 3, hb, wb), dtype=torch.float32)
        batch[:] = torch.tensor(self.pixel_mean, dtype=torch.float32).view(3, 1, 1)
        for i, (img, (hv, wv)) in enumerate(zip(images, valid)):
            batch[i, :, :hv, :wv] = torch.from_numpy(resize_image_bilinear(img, (hv, wv))).permute(2, 0, 1).float()
        return batch, valid
