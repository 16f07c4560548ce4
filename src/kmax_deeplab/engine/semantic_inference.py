"""Semantic-segmentation inference as mmsegmentation 0.30 runs it: whole image or sliding
window, with optional flip and multi-scale test-time augmentation.

The model side is one callable, ``model_fn(img [1, 3, h, w] float32) -> logits [1, C, h, w]``
at the input size (mmseg's ``EncoderDecoder.encode_decode``, which resizes the decode head's
output to its input, bilinear; the semantic family's eval-mode ``forward(x)["sem_seg"]``).
Everything else follows mmseg 0.30 (``mmseg/models/segmentors/encoder_decoder.py`` and
``mmseg/datasets/pipelines/test_time_aug.py``):

- per test-time augmentation (:meth:`SemanticTestConfig.augmentations`: every scale ratio,
  each without and, with ``flip``, with every flip direction, as ``MultiScaleFlipAug``), the
  original image is resized with the test pipeline's ``Resize(keep_ratio=True)`` to the bound
  ``(int(img_scale[0] * ratio), int(img_scale[1] * ratio))`` (mmcv ``rescale_size``), then
  flipped;
- ``whole``: ``model_fn`` on the whole resized image; ``slide``: ``h_grids = max(H - h_crop +
  h_stride - 1, 0) // h_stride + 1`` windows per column (likewise ``w``), each window
  ``[y1, y1 + h_crop)`` clipped to the image and shifted back to start at
  ``max(y2 - h_crop, 0)`` (a window larger than the image is the image), the logits summed
  into place and divided by the per-pixel window count (``slide_inference``);
- the logits are resized back to the original size (bilinear, ``align_corners``), turned into
  probabilities (softmax over classes; sigmoid for one channel) and flipped back (``inference``);
- the probabilities of all augmentations are averaged (``aug_test``; also a single pass is
  "averaged" over one).

The parity test (``tests/test_semantic_inference.py``) compares this with mmseg's own
``EncoderDecoder.whole_inference`` / ``slide_inference`` / ``aug_test`` and its
``MultiScaleFlipAug`` pipeline (fixture recorded by ``tools/record_mmseg_semantic_inference.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SemanticTestConfig", "semantic_inference", "slide_inference", "whole_inference",
           "scaled_test_size", "MODES", "FLIP_DIRECTIONS"]

MODES = ("whole", "slide")
FLIP_DIRECTIONS = ("horizontal", "vertical")

ModelFn = Callable[[Tensor], Tensor]


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"semantic test config: {name} must be one int or two ints (h, w), got {value!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"semantic test config: {name} must be >= 1, got {value!r}")
    return a, b


@dataclass(frozen=True)
class SemanticTestConfig:
    """Test-time settings of a semantic model (mmseg's ``test_cfg`` + test pipeline).

    The defaults are the ADE20K configs of mmseg 0.30 / K-Net (``configs/_base_/datasets/
    ade20k.py``: ``img_scale=(2048, 512)``, no flip, single scale; ``test_cfg=dict(mode='whole')``;
    the 512x512 sliding-window variant uses ``crop_size=(512, 512), stride=(341, 341)``).

    Attributes:
        mode: ``"whole"`` (one forward pass per augmentation) or ``"slide"`` (windows of
            ``crop_size`` every ``stride``).
        crop_size: ``(h_crop, w_crop)`` of the sliding window, pixels of the resized image.
        stride: ``(h_stride, w_stride)`` of the sliding window.
        flip: also run each scale flipped (``MultiScaleFlipAug(flip=True)``).
        flip_direction: ``"horizontal"`` and/or ``"vertical"`` (one flipped pass per direction).
        scales: the ``img_ratios`` of ``MultiScaleFlipAug`` (e.g. ``(0.5, 0.75, 1.0, 1.25,
            1.5, 1.75)`` for mmseg's multi-scale test); each multiplies ``img_scale``.
        img_scale: ``(long, short)`` bound of the test ``Resize(keep_ratio=True)``: the image is
            scaled by ``min(long / max(h, w), short / min(h, w))`` (ADE20K ``(2048, 512)``,
            Cityscapes ``(2048, 1024)``); ``None`` keeps the original size (ratio 1) or scales
            it by the ratio (mmseg's ``img_scale=None`` with ratios).
        align_corners: of every bilinear logits resize (mmseg's ``align_corners``; False in the
            K-Net configs).
    """

    mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    flip: bool = False
    flip_direction: tuple[str, ...] = ("horizontal",)
    scales: tuple[float, ...] = (1.0,)
    img_scale: tuple[int, int] | None = (2048, 512)
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"semantic test config: mode must be one of {MODES}, got {self.mode!r}")
        object.__setattr__(self, "crop_size", _pair(self.crop_size, "crop_size"))
        object.__setattr__(self, "stride", _pair(self.stride, "stride"))
        directions = (self.flip_direction,) if isinstance(self.flip_direction, str) else tuple(self.flip_direction)
        bad = [d for d in directions if d not in FLIP_DIRECTIONS]
        if bad or not directions:
            raise ValueError(f"semantic test config: flip_direction must be among {FLIP_DIRECTIONS}, "
                             f"got {self.flip_direction!r}")
        object.__setattr__(self, "flip_direction", directions)
        scales = (self.scales,) if isinstance(self.scales, (int, float)) else tuple(self.scales)
        if not scales or any(not np.isfinite(float(s)) or float(s) <= 0 for s in scales):
            raise ValueError(f"semantic test config: scales must be positive numbers, got {self.scales!r}")
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))
        if self.img_scale is not None:
            object.__setattr__(self, "img_scale", _pair(self.img_scale, "img_scale"))
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "align_corners", bool(self.align_corners))

    @classmethod
    def from_config(cls, cfg: Any) -> "SemanticTestConfig":
        """The test settings of a run config: the fields of this class found in ``cfg.test``
        (a section or a dict), else in ``cfg.postprocess``; ``img_scale``, when neither has it,
        is ``cfg.model.image_size`` (the semantic K-Net's test scale ``(short, long)``; the
        resize rule takes the larger side as the long bound, so the order does not matter) and
        ``align_corners`` is ``cfg.model.align_corners`` when the model section has one;
        other missing fields keep the defaults.

        Raises:
            ValueError: a value is invalid (the message names the field).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        found: dict[str, Any] = {}
        for section in (getattr(cfg, "postprocess", None), getattr(cfg, "test", None)):  # test wins
            if section is None:
                continue
            items = section.items() if isinstance(section, dict) else (
                (f.name, getattr(section, f.name)) for f in dataclasses.fields(section)) \
                if dataclasses.is_dataclass(section) else vars(section).items()
            found.update({k: v for k, v in items if k in names})
        model = getattr(cfg, "model", None)
        image_size = getattr(model, "image_size", None)
        if "img_scale" not in found and image_size is not None:
            found["img_scale"] = tuple(image_size)
        if "align_corners" not in found and getattr(model, "align_corners", None) is not None:
            found["align_corners"] = model.align_corners  # the semantic K-Net keeps it in its model section
        return cls(**found)

    def augmentations(self) -> list[tuple[float, str | None]]:
        """``(ratio, flip direction or None)`` per pass, in ``MultiScaleFlipAug``'s order: for
        each scale, for flip in ``(False, True)`` (``(False,)`` without ``flip``), for each
        direction. As in mmseg, the unflipped pass is repeated once per listed direction (one
        direction, the configs' case, gives one unflipped and one flipped pass per scale).
        """
        flips = (False, True) if self.flip else (False,)
        return [(ratio, d if flip else None) for ratio in self.scales for flip in flips
                for d in self.flip_direction]


def scaled_test_size(height: int, width: int, cfg: SemanticTestConfig, ratio: float) -> tuple[int, int]:
    """``(h, w)`` the test pipeline resizes an ``height x width`` image to at ``ratio``.

    ``MultiScaleFlipAug``: bound ``(int(img_scale[0] * ratio), int(img_scale[1] * ratio))``;
    mmcv ``rescale_size``: ``f = min(max(bound) / max(h, w), min(bound) / min(h, w))``, size
    ``(int(h * f + 0.5), int(w * f + 0.5))``. With ``img_scale=None``: ``(int(h * ratio),
    int(w * ratio))`` (mmseg's bound ``(int(w * ratio), int(h * ratio))``, itself rescaled).
    """
    from kmax_deeplab.data.semantic import rescale_size

    if cfg.img_scale is None:
        bound = (int(width * ratio), int(height * ratio))
    else:
        bound = (int(cfg.img_scale[0] * ratio), int(cfg.img_scale[1] * ratio))
    return rescale_size(height, width, bound)


def _resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(int(s) for s in size):
        return x  # F.interpolate to the same size is the identity for bilinear
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=align_corners)


def _check_logits(logits: Tensor, img: Tensor) -> Tensor:
    if logits.dim() != 4 or logits.shape[0] != img.shape[0] or tuple(logits.shape[-2:]) != tuple(img.shape[-2:]):
        raise ValueError(f"semantic inference: the model returned logits of shape {tuple(logits.shape)} for "
                         f"an input of shape {tuple(img.shape)}; expected [B, C, {img.shape[-2]}, {img.shape[-1]}] "
                         "(logits resized to the input, as mmseg's encode_decode)")
    return logits.float()


def whole_inference(model_fn: ModelFn, img: Tensor) -> Tensor:
    """mmseg ``whole_inference`` without the rescale: ``model_fn(img)``, checked.

    Args:
        img: ``[B, 3, H, W]`` float32, the model's input.

    Returns:
        ``[B, C, H, W]`` float32 logits.
    """
    return _check_logits(model_fn(img), img)


def slide_inference(model_fn: ModelFn, img: Tensor, crop_size: Sequence[int], stride: Sequence[int]) -> Tensor:
    """mmseg ``slide_inference`` without the rescale: overlapping windows, logits averaged.

    ``h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1`` (likewise ``w``); window
    ``(h_idx, w_idx)`` starts at ``y1 = h_idx * h_stride``, ends at ``y2 = min(y1 + h_crop, H)``
    and then starts at ``max(y2 - h_crop, 0)``, so every window is ``h_crop`` tall (or ``H``
    when the image is smaller, fed without padding). Each pixel's logits are the mean over the
    windows covering it. A single window (the image fits the crop) returns its logits directly,
    the same values without mmseg's zero-filled accumulator and count.

    Args:
        model_fn: ``[B, 3, h, w] -> [B, C, h, w]`` logits.
        img: ``[B, 3, H, W]`` float32.
        crop_size: ``(h_crop, w_crop)``; stride: ``(h_stride, w_stride)`` (pixels, >= 1).

    Returns:
        ``[B, C, H, W]`` float32 logits.
    """
    h_stride, w_stride = _pair(stride, "stride")
    h_crop, w_crop = _pair(crop_size, "crop_size")
    batch, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    if h_grids == w_grids == 1:  # one window, the whole image: mmseg's (0 + logits) / 1, without the copies
        return whole_inference(model_fn, img)
    preds: Tensor | None = None
    count = torch.zeros((batch, 1, h_img, w_img), dtype=torch.float32, device=img.device)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop = img[:, :, y1:y2, x1:x2]
            logits = _check_logits(model_fn(crop), crop)
            if preds is None:
                preds = logits.new_zeros((batch, logits.shape[1], h_img, w_img))
            preds[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    assert preds is not None and bool((count > 0).all())  # the windows cover the image by construction
    return preds / count


def _as_image_tensor(image: Any) -> Tensor:
    """``[H, W, 3]`` uint8 array or ``[3, H, W]`` tensor -> ``[3, H, W]`` float32."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"semantic inference: image array must be [H, W, 3], got {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    if isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] == 3:
        return image.float()
    raise ValueError("semantic inference: image must be an [H, W, 3] uint8 array or a [3, H, W] tensor, "
                     f"got {type(image).__name__} of shape {tuple(getattr(image, 'shape', ()))}")


def _default_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from kmax_deeplab.data.semantic import resize_image_bilinear

    return resize_image_bilinear(image, size)


def semantic_inference(model_fn: ModelFn, image: Any, cfg: SemanticTestConfig | None = None, *,
                       resize_image: Callable[[np.ndarray, tuple[int, int]], np.ndarray] | None = None) -> Tensor:
    """Class probabilities of one image at its original size, as mmseg 0.30's ``simple_test`` /
    ``aug_test`` compute them (module docstring).

    Args:
        model_fn: ``[1, 3, h, w]`` float32 (RGB 0..255, the family's input) -> ``[1, C, h, w]``
            logits at the input size; called once per augmentation (whole) or per window (slide).
            Run it under ``torch.inference_mode()`` / in eval mode yourself.
        image: the original image, ``[H, W, 3]`` uint8 RGB (resized per scale by ``resize_image``)
            or a ``[3, H, W]`` float tensor (resized bilinearly as floats, no rounding).
        cfg: the test settings (default :class:`SemanticTestConfig()`: whole image, ADE20K's
            ``(2048, 512)`` bound, no flip).
        resize_image: ``(uint8 [H, W, 3], (h, w)) -> uint8 [h, w, 3]`` for array images
            (default :func:`kmax_deeplab.data.semantic.resize_image_bilinear`, OpenCV's
            ``INTER_LINEAR`` grid, within one level of mmcv's ``imrescale``).

    Returns:
        ``[C, H, W]`` float32: the mean over augmentations of the softmax (sigmoid when
        ``C == 1``) probabilities; ``argmax(0)`` gives the train ids (0..C-1), as mmseg's
        ``seg_logit.argmax(dim=1)``.

    Raises:
        ValueError: a badly shaped image, or logits that are not ``[1, C, h, w]`` at the input size.
    """
    cfg = cfg or SemanticTestConfig()
    is_array = isinstance(image, np.ndarray)
    if is_array:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"semantic inference: image array must be [H, W, 3] uint8, got "
                             f"{image.shape} {image.dtype}")
        height, width = image.shape[:2]
    else:
        image = _as_image_tensor(image)
        height, width = image.shape[-2:]
    resize_image = resize_image or _default_resize
    total: Tensor | None = None
    passes = cfg.augmentations()
    for ratio, direction in passes:
        size = scaled_test_size(height, width, cfg, ratio)
        if is_array:
            resized = resize_image(image, size)
            if tuple(resized.shape[:2]) != tuple(size):
                raise ValueError(f"semantic inference: resize_image returned {resized.shape[:2]}, asked {size}")
            x = _as_image_tensor(resized)[None]
        else:
            x = _resize(image[None], size, align_corners=False)
        if direction == "horizontal":
            x = x.flip(-1)
        elif direction == "vertical":
            x = x.flip(-2)
        if cfg.mode == "slide":
            logits = slide_inference(model_fn, x, cfg.crop_size, cfg.stride)
        else:
            logits = whole_inference(model_fn, x)
        logits = _resize(logits, (height, width), cfg.align_corners)
        probs = torch.sigmoid(logits) if logits.shape[1] == 1 else F.softmax(logits, dim=1)
        if direction == "horizontal":
            probs = probs.flip(-1)
        elif direction == "vertical":
            probs = probs.flip(-2)
        total = probs if total is None else total + probs
    assert total is not None
    return (total / len(passes))[0]
