"""Geometric augmentation applied jointly to the image and the panoptic id map (spec §4).

Training (bytedance ``PanoptickMaXDeepLabDatasetMapper``): large-scale-jitter resize (the
image is fitted into ``crop_size * s``, ``s ~ U[min_scale, max_scale]``), random crop to at
most ``crop_size``, horizontal flip, then padding on the bottom/right to exactly
``crop_size`` (image value 127.5 = mean grey, ids ``PAD_ID`` = void). Crops whose stride-4
ground truth has ``<= min_valid_pixels`` non-void pixels or no non-crowd segment are
re-sampled. Test time: resize the longer side to the canvas, pad bottom/right, and keep
the valid region size to crop predictions back.

Images use bilinear interpolation (antialiased when shrinking, Pillow's resampler), ids use
nearest. Resizing and cropping are fused: only the crop window is resampled (Pillow
``resize(box=...)``, exactly the pixels of resize-then-crop), so a 2x scale of a COCO image
never materialises a 2562-pixel canvas. The geometry works on one id map and the image in
its own dtype (uint8 from the dataset, float32 allowed); the per-segment masks and the
float image are built once at the end (:func:`~kmax_deeplab.data.record.build_sample`).
Every random choice comes from the ``numpy.random.Generator`` passed in, so runs are
reproducible. Normalisation is not done here (the model does ``x / 127.5 - 1``). Colour
jitter: :mod:`kmax_deeplab.data.photometric`; copy-paste: :mod:`kmax_deeplab.data.copy_paste`.

Transforms are callables ``(record, rng) -> record`` on the record format of
:mod:`kmax_deeplab.data.record`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kmax_deeplab.data.photometric import ColorAugSSD
from kmax_deeplab.data.record import PAD_ID

__all__ = [
    "PAD_VALUE", "resize", "resize_crop", "crop", "hflip", "pad_to", "count_valid_stride4",
    "LargeScaleJitter", "ResizeLongestAndPad", "Compose", "resize_longest_and_pad", "build_transforms",
]

PAD_VALUE = 127.5
"""Image value of padded pixels (mean grey: 0 after ``x / 127.5 - 1``)."""

Record = dict[str, Any]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest resizing (pixel-centre convention)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _resample_window(image: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int],
                     mode: str) -> np.ndarray:
    """Window ``(top, left, h, w)`` of ``image`` resized to ``size``, without the full resize.

    Args:
        image: uint8 or float32 ``[H, W, 3]``.
        size: (nh, nw) of the (virtual) fully resized image.
        window: (top, left, h, w) inside the ``size`` canvas.
        mode: ``"bilinear"`` (Pillow, antialiased when shrinking) or ``"nearest"``.

    Returns:
        ``[h, w, 3]`` of the input dtype.
    """
    top, left, th, tw = window
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == tuple(size):
        return image[top:top + th, left:left + tw]
    if mode == "nearest":
        rows = _nearest_index(in_h, size[0])[top:top + th]
        cols = _nearest_index(in_w, size[1])[left:left + tw]
        return image[np.ix_(rows, cols)]
    if mode != "bilinear":
        raise ValueError(f"image_mode must be 'bilinear' or 'nearest', got {mode!r}")
    # Output pixel x of the full resize samples source (x + 0.5) * in_w / nw - 0.5, so the
    # window is the source box [left, left + tw] * in_w / nw (Pillow keeps the filter
    # support of the full resize, i.e. antialiasing when shrinking).
    fy, fx = in_h / size[0], in_w / size[1]
    box = (left * fx, top * fy, (left + tw) * fx, (top + th) * fy)
    if image.dtype == np.uint8:
        im = Image.fromarray(np.ascontiguousarray(image), "RGB")
        return np.asarray(im.resize((tw, th), Image.Resampling.BILINEAR, box=box))
    # Float images: one Pillow "F" (float32) plane per channel, [H, W] x 3 -> [h, w, 3].
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), "F")
                         .resize((tw, th), Image.Resampling.BILINEAR, box=box)) for c in range(3)]
    return np.clip(np.stack(planes, -1), 0, 255).astype(image.dtype, copy=False)


def resize_crop(record: Record, size: tuple[int, int], window: tuple[int, int, int, int] | None = None,
                image_mode: str = "bilinear") -> Record:
    """Resize to ``size`` = (h, w) and crop ``window`` = (top, left, h, w) in one step.

    Equal to :func:`resize` followed by :func:`crop` (ids: nearest; image: bilinear or
    nearest), but only the window is computed.
    """
    ids = record["panoptic"]
    if window is None:
        window = (0, 0, int(size[0]), int(size[1]))
    top, left, th, tw = window
    if not (0 <= top and 0 <= left and top + th <= size[0] and left + tw <= size[1]):
        raise ValueError(f"crop window {window} outside the resized {size[0]}x{size[1]} image")
    out = dict(record)
    out["image"] = _resample_window(record["image"], size, window, image_mode)
    rows = _nearest_index(ids.shape[0], size[0])[top:top + th]
    cols = _nearest_index(ids.shape[1], size[1])[left:left + tw]
    out["panoptic"] = ids[np.ix_(rows, cols)]
    return out


def resize(record: Record, size: tuple[int, int], image_mode: str = "bilinear") -> Record:
    """Resize image (bilinear, or nearest) and ids (nearest) to ``size`` = (h, w)."""
    return resize_crop(record, size, None, image_mode)


def crop(record: Record, top: int, left: int, height: int, width: int) -> Record:
    """Crop image and ids to rows ``top:top+height``, columns ``left:left+width``."""
    out = dict(record)
    out["image"] = record["image"][top:top + height, left:left + width]
    out["panoptic"] = record["panoptic"][top:top + height, left:left + width]
    return out


def hflip(record: Record) -> Record:
    """Mirror image and ids left-right (exactly; no resampling)."""
    out = dict(record)
    out["image"] = record["image"][:, ::-1]
    out["panoptic"] = record["panoptic"][:, ::-1]
    return out


def pad_to(record: Record, size: tuple[int, int], pad_value: float = PAD_VALUE) -> Record:
    """Pad bottom/right to ``size`` = (h, w): image with ``pad_value``, ids with ``PAD_ID``.

    Image and ids keep their dtypes. A uint8 image cannot hold 127.5, so its padding holds
    ``round(pad_value)`` and the record gets ``pad_value``, which
    :func:`~kmax_deeplab.data.record.build_sample` writes on every ``PAD_ID`` pixel of the
    float image. Sets ``valid_size`` to the unpadded (h, w).

    Raises:
        ValueError: the record is larger than ``size``.
    """
    h, w = record["panoptic"].shape
    if h > size[0] or w > size[1]:
        raise ValueError(f"cannot pad {h}x{w} to smaller {size[0]}x{size[1]}")
    src = record["image"]
    fill = pad_value if np.issubdtype(src.dtype, np.floating) else min(255, max(0, round(pad_value)))
    image = np.full((size[0], size[1], 3), fill, dtype=src.dtype)
    image[:h, :w] = src
    ids = np.full(size, PAD_ID, dtype=record["panoptic"].dtype)
    ids[:h, :w] = record["panoptic"]
    out = dict(record)
    out["image"], out["panoptic"], out["valid_size"] = image, ids, (h, w)
    out["pad_value"] = float(pad_value)
    return out


def count_valid_stride4(record: Record) -> tuple[int, int]:
    """Return (non-void pixels of ``ids[::4, ::4]``, non-crowd segments present there).

    Non-void = covered by a non-crowd segment (bytedance ``valid_pixel_num``).
    """
    sub = record["panoptic"][::4, ::4]
    good = np.array([s["id"] for s in record["segments"] if not s["iscrowd"]], dtype=np.int64)
    hit = np.isin(sub, good)
    return int(hit.sum()), int(np.unique(sub[hit]).size)


def scale_choices(min_scale: float, max_scale: float, step: float) -> np.ndarray:
    """The discrete scales deeplab2 draws from (``preprocess_utils.get_random_scale``, step > 0).

    ``num = int((max - min) / step + 1)`` in Python floats, then TF's float32
    ``linspace(min, max, num)`` (``min + i * (max - min) / (num - 1)``). The count is deeplab2's,
    quirks included: for 0.1..2.0 in steps of 0.1 it is 19, not 20, so the values are 0.1056 apart.

    Returns:
        float32 ``[num]``.
    """
    num = int((max_scale - min_scale) / step + 1)
    if num <= 1:
        return np.array([min_scale], dtype=np.float32)
    lo, hi = np.float32(min_scale), np.float32(max_scale)
    delta = (hi - lo) / np.float32(num - 1)
    return (lo + np.arange(num, dtype=np.float32) * delta).astype(np.float32)


def random_scale(min_scale: float, max_scale: float, step: float, rng: np.random.Generator) -> float:
    """One random scale: uniform in ``[min, max)`` (step 0, bytedance) or one of
    :func:`scale_choices` with equal probability (deeplab2); ``min == max`` returns it."""
    if min_scale == max_scale:
        return float(min_scale)
    if step <= 0:
        return float(rng.uniform(min_scale, max_scale))
    choices = scale_choices(min_scale, max_scale, step)
    return float(choices[int(rng.integers(len(choices)))])


class LargeScaleJitter:
    """Training augmentation: scale jitter, random crop, flip, pad (spec §4, bytedance).

    Args:
        crop_size: (h, w) of the output canvas, e.g. (1281, 1281).
        min_scale / max_scale: scale range s; the image is fitted into ``crop_size * s``
            (detectron2 ``ResizeScale``: factor ``min(s*h_c/H, s*w_c/W)``).
        scale_step: 0 draws s uniformly in ``[min_scale, max_scale)``; > 0 draws one of the
            ``int((max - min) / step + 1)`` float32 values ``linspace(min, max)`` with equal
            probability (:func:`random_scale`, deeplab2's ``get_random_scale``).
        flip: random horizontal flip with probability 0.5.
        min_valid_pixels: re-sample when the stride-4 ground truth has ``<=`` this many
            non-void pixels or no non-crowd segment (bytedance: 4096). 0 only re-samples
            crops without segments; a negative value disables re-sampling.
        max_tries: attempts before keeping the last crop (with a warning).
        pad_value: image value of padding.
        image_mode: ``"bilinear"`` (default) or ``"nearest"`` image interpolation.
        color_jitter: optional photometric transform ``(image, rng) -> image`` (BD:
            :class:`~kmax_deeplab.data.photometric.ColorAugSSD`), applied to the image of
            every try after the resize, before the padding (BD order: resize, colour, crop,
            flip; the jitter is per pixel, so jittering only the crop is the same).
        autoaugment: optional :class:`~kmax_deeplab.data.autoaugment.AutoAugment` (deeplab2
            MaX-L): applied to the whole resized image *before* the crop and padding, as
            deeplab2's ``preprocess_image_and_label`` does (Equalize and Contrast read the
            whole image's histogram, Sharpness keeps its border).
    """

    def __init__(self, crop_size: Sequence[int], min_scale: float = 0.2, max_scale: float = 2.0,
                 flip: bool = True, min_valid_pixels: int = 4096, max_tries: int = 20,
                 scale_step: float = 0.0,
                 pad_value: float = PAD_VALUE, image_mode: str = "bilinear",
                 color_jitter: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 autoaugment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.scale_step = float(scale_step)
        self.flip = flip
        self.min_valid_pixels = int(min_valid_pixels)
        self.max_tries = int(max_tries)
        self.pad_value = pad_value
        self.image_mode = image_mode
        self.color_jitter = color_jitter
        self.autoaugment = autoaugment

    def sample_once(self, record: Record, rng: np.random.Generator) -> Record:
        """One random resize + crop + flip + pad, without the validity check."""
        ch, cw = self.crop_size
        h, w = record["panoptic"].shape
        s = random_scale(self.min_scale, self.max_scale, self.scale_step, rng)
        f = min(s * ch / h, s * cw / w)
        nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
        th, tw = min(nh, ch), min(nw, cw)
        top = int(rng.integers(0, nh - th + 1))
        left = int(rng.integers(0, nw - tw + 1))
        if self.autoaugment is not None:
            out = resize_crop(record, (nh, nw), None, self.image_mode)
            out["image"] = self.autoaugment(out["image"], rng)
            out = crop(out, top, left, th, tw)
        else:
            out = resize_crop(record, (nh, nw), (top, left, th, tw), self.image_mode)
        if self.color_jitter is not None:
            out["image"] = self.color_jitter(out["image"], rng)
        if self.flip and rng.random() < 0.5:
            out = hflip(out)
        return pad_to(out, self.crop_size, self.pad_value)

    def __call__(self, record: Record, rng: np.random.Generator) -> Record:
        out = self.sample_once(record, rng)
        if self.min_valid_pixels < 0:
            return out
        for _ in range(self.max_tries - 1):
            valid, nseg = count_valid_stride4(out)
            if valid > self.min_valid_pixels and nseg > 0:
                return out
            out = self.sample_once(record, rng)
        valid, nseg = count_valid_stride4(out)
        if not (valid > self.min_valid_pixels and nseg > 0):
            warnings.warn(f"{record.get('file_name')}: no crop with > {self.min_valid_pixels} valid "
                          f"stride-4 pixels in {self.max_tries} tries; keeping the last one",
                          RuntimeWarning, stacklevel=2)
        return out


def _longest_side_size(h: int, w: int, canvas: tuple[int, int]) -> tuple[int, int]:
    f = min(canvas[0] / h, canvas[1] / w)
    return max(1, min(canvas[0], int(math.floor(h * f + 0.5)))), max(1, min(canvas[1], int(math.floor(w * f + 0.5))))


class ResizeLongestAndPad:
    """Test-time geometry: fit the image into ``size`` (longer side), pad bottom/right.

    The record gets ``valid_size`` = the resized (h, w), so predictions on the canvas can
    be cropped to ``[:h, :w]`` and resized back to the original ``height``/``width``.
    """

    def __init__(self, size: Sequence[int], pad_value: float = PAD_VALUE,
                 size_fn: Callable[[int, int], tuple[int, int]] | None = None) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.pad_value = pad_value
        # (h, w) -> resized (h, w); default: longer side to ``size``. The kMaX geometry passes the
        # reference's own test-time rule (kmax_deeplab.geometry.inference_size).
        self.size_fn = size_fn or (lambda h, w: _longest_side_size(h, w, self.size))

    def __call__(self, record: Record, rng: np.random.Generator | None = None) -> Record:
        h, w = record["panoptic"].shape
        out = resize_crop(record, self.size_fn(h, w))
        return pad_to(out, self.size, self.pad_value)


def short_long_size(h: int, w: int, short: int, long: int) -> tuple[int, int]:
    """Size of ``h x w`` resized, aspect kept, to fit ``short x long`` (one side reaches it).

    mmcv ``rescale_size`` with ``keep_ratio=True`` (mmdet ``Resize(img_scale=(long, short))``,
    K-Net's test resize to 1333x800): ``s = min(long / max(h, w), short / min(h, w))`` and each
    side is ``int(side * s + 0.5)``.
    """
    s = min(long / max(h, w), short / min(h, w))
    return int(h * s + 0.5), int(w * s + 0.5)


class ResizeShortLong:
    """Resize a record to fit ``short x long`` (aspect kept, no padding; the collate pads).

    Args:
        short: the short-side target, or ``(lo, hi)`` to draw it uniformly from (inclusive;
            mmdet ``multiscale_mode='range'``, K-Net trains with (640, 800)).
        long: the long-side cap (1333).
        flip: mirror with probability 0.5 (training).
    """

    def __init__(self, short: int | Sequence[int], long: int, *, flip: bool = False) -> None:
        self.short = (int(short), int(short)) if isinstance(short, (int, float)) else tuple(int(s) for s in short)
        self.long = int(long)
        self.flip = flip

    def __call__(self, record: Record, rng: np.random.Generator | None = None) -> Record:
        lo, hi = self.short
        short = lo if lo == hi or rng is None else int(rng.integers(lo, hi + 1))
        h, w = record["panoptic"].shape
        size = short_long_size(h, w, short, self.long)
        out = resize(record, size) if size != (h, w) else dict(record)
        if self.flip and rng is not None and rng.random() < 0.5:
            out = hflip(out)
        # a writable, contiguous copy (resampled and decoded images may be read-only views)
        out["image"] = np.array(out["image"])
        out["panoptic"] = np.ascontiguousarray(out["panoptic"])
        out["valid_size"] = size
        return out


def resize_longest_and_pad(image: torch.Tensor, size: Sequence[int],
                           pad_value: float = PAD_VALUE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize an image tensor so it fits ``size`` and pad it (inference).

    Args:
        image: float ``[3, H, W]`` or ``[B, 3, H, W]`` RGB 0..255.
        size: (h, w) canvas, e.g. the model's ``image_size``.
        pad_value: value of the bottom/right padding.

    Returns:
        ``(canvas, (h, w))``: float32 ``[.., 3, size_h, size_w]`` and the valid region.
    """
    batched = image.dim() == 4
    x = image if batched else image[None]
    h, w = x.shape[-2:]
    nh, nw = _longest_side_size(h, w, (int(size[0]), int(size[1])))
    if (nh, nw) != (h, w):
        x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=nh < h).clamp_(0, 255)
    x = F.pad(x.float(), (0, int(size[1]) - nw, 0, int(size[0]) - nh), value=pad_value)
    return (x if batched else x[0]), (nh, nw)


class Compose:
    """Apply transforms ``(record, rng) -> record`` in order."""

    def __init__(self, transforms: Sequence[Callable[[Record, np.random.Generator], Record]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, record: Record, rng: np.random.Generator) -> Record:
        for t in self.transforms:
            record = t(record, rng)
        return record


def build_transforms(data_cfg: Any, is_train: bool) -> Callable[..., Record]:
    """Build the transform for a DataConfig-like section (duck typed; spec §4).

    Training (BD recipe): :class:`LargeScaleJitter` with SSD colour jitter
    (``color_jitter``, default on) and, when ``copy_paste`` (default on), a
    :class:`~kmax_deeplab.data.copy_paste.PanopticCopyPaste` whose pasted image uses the
    halved scale range. Reads ``crop_size``, ``min_scale``, ``max_scale``, ``flip``,
    ``min_valid_pixels`` and optionally ``color_jitter``, ``copy_paste``, ``autoaugment`` (a
    deeplab2 policy name, :mod:`kmax_deeplab.data.autoaugment`; not on the pasted image). Test time:
    :class:`ResizeLongestAndPad`.

    Returns:
        ``(record, rng) -> record``, or ``(record, rng, second) -> record`` for copy-paste
        (attribute ``needs_second_sample``; :class:`COCOPanopticDataset` handles both).
    """
    if not is_train:
        return ResizeLongestAndPad(data_cfg.crop_size)
    jitter = ColorAugSSD() if getattr(data_cfg, "color_jitter", True) else None
    autoaugment = None
    if getattr(data_cfg, "autoaugment", ""):
        from kmax_deeplab.data.autoaugment import AutoAugment

        autoaugment = AutoAugment(data_cfg.autoaugment)
    main = LargeScaleJitter(data_cfg.crop_size, data_cfg.min_scale, data_cfg.max_scale, flip=data_cfg.flip,
                            min_valid_pixels=data_cfg.min_valid_pixels, color_jitter=jitter, autoaugment=autoaugment,
                            scale_step=getattr(data_cfg, "scale_step", 0.0))
    if not getattr(data_cfg, "copy_paste", True):
        return main
    from kmax_deeplab.data.copy_paste import PanopticCopyPaste  # copy_paste imports this module

    # BD build_transform_gen(cfg, is_train, scale_ratio=0.5) for the pasted image.
    second = LargeScaleJitter(data_cfg.crop_size, 0.5 * data_cfg.min_scale, 0.5 * data_cfg.max_scale,
                              flip=data_cfg.flip, min_valid_pixels=-1, color_jitter=jitter)
    return PanopticCopyPaste(main, second, min_valid_pixels=data_cfg.min_valid_pixels)
