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

__all__ = ["SemanticResize", "ToTrainingSample"]


class ToTrainingSample:
    """Record -> training sample: ``image`` float32 ``[3, H, W]`` RGB 0..255 with the padded
    region (outside ``valid_size``) set to ``pixel_mean`` (0 once normalised, as mmseg's ``Pad``
    after ``Normalize``), ``sem_seg`` int64 ``[H, W]`` (255 ignored), ``valid_size``."""

    def __init__(self, pixel_mean: Sequence[float]) -> None:
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
        img = torch.from_numpy(np.ascontiguousarray(record["image"])).permute(2, 0, 1).float()
        h, w = record.get("valid_size", img.shape[-2:])
        out = img.clone() if (h, w) == tuple(img.shape[-2:]) else self.pixel_mean.expand_as(img).clone()
        out[:, :h, :w] = img[:, :h, :w]
        return {"image": out, "sem_seg": torch.from_numpy(np.ascontiguousarray(record["sem_seg"])).long(),
                "valid_size": (int(h), int(w)), "image_id": record.get("image_id"),
                "file_name": record.get("file_name")}


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

    def transforms(self, data_cfg, is_train: bool):
        """Training: mmseg's ADE20K pipeline (:func:`~kmax_deeplab.data.semantic.build_semantic_transforms`:
        ratio resize of ``(long, short)`` by ``data.min_scale..max_scale``, ``data.crop_size``
        crop with the 0.75 category rule, flip when ``data.flip``, photometric distortion when
        ``data.color_jitter``, pad) then :class:`ToTrainingSample`. Test: the test resize only.
        """
        from kmax_deeplab.data.semantic import build_semantic_transforms
        from kmax_deeplab.data.transforms import Compose

        if not is_train:
            return Compose([self._test_resize, ToTrainingSample(self.pixel_mean)])
        steps = build_semantic_transforms(
            crop_size=tuple(int(s) for s in data_cfg.crop_size), scale=(self.long, self.short),
            ratio_range=(float(data_cfg.min_scale), float(data_cfg.max_scale)),
            flip_prob=0.5 if getattr(data_cfg, "flip", True) else 0.0,
            photometric=bool(getattr(data_cfg, "color_jitter", True)))
        return Compose([steps, ToTrainingSample(self.pixel_mean)])

    def _test_resize(self, record: dict, rng: np.random.Generator | None = None) -> dict:
        from kmax_deeplab.data.semantic import resize_image_bilinear, resize_label_nearest

        size = self.test_size(*record["image"].shape[:2])
        out = dict(record, image=resize_image_bilinear(record["image"], size))
        if "sem_seg" in record:
            out["sem_seg"] = resize_label_nearest(record["sem_seg"], size)
        return out

    def collate(self, num_classes: int):
        """``collate_panoptic``: training crops share one size, so images stack; targets keep
        ``sem_seg`` (a batch of different sizes is padded, ``sem_seg`` 255 there)."""
        from functools import partial

        from kmax_deeplab.data.loader import collate_panoptic

        return partial(collate_panoptic, pad_value=self.pixel_mean, ignore_label=255)

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
