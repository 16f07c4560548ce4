"""``Predictor``: images of any size in, COCO-panoptic predictions at the original size out.

Pre-processing follows spec ``kmax_deeplab.md`` §1 (test time): the longer side is resized
to the model canvas (``cfg.model.image_size``), the image is padded on the right and bottom
with 127.5 (mean grey, i.e. 0 after the model's ``x/127.5 - 1``), and the mask logits are
upsampled to the canvas, cropped to the image and resized back (§3) by
:func:`kmax_deeplab.modeling.postprocess.panoptic_inference`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from kmax_deeplab.modeling.postprocess import panoptic_inference, semantic_inference

ImageInput = Union[np.ndarray, Image.Image, str, Path]

PAD_VALUE = 127.5
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_image(image: ImageInput) -> np.ndarray:
    """Return ``image`` as an RGB ``[H, W, 3]`` uint8 array.

    Args:
        image: a path, a PIL image (any mode; converted to RGB), or a uint8 array
            ``[H, W, 3]`` (RGB), ``[H, W, 4]`` (alpha dropped) or ``[H, W]`` (grey).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image, or the array has a bad shape/dtype.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB")).copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{path}: cannot read image ({e})") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 RGB, got dtype {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image array must be [H, W, 3] (RGB), got shape {image.shape}")
        return np.ascontiguousarray(image[:, :, :3])
    raise TypeError(f"unsupported image type {type(image).__name__}; "
                    "give a path, a PIL image or a uint8 numpy array")


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


def preprocess(images: Sequence[np.ndarray], canvas: Sequence[int]) -> tuple[torch.Tensor, list]:
    """Resize (bilinear) and pad RGB uint8 images onto the model canvas.

    Args:
        images: RGB ``[H, W, 3]`` uint8 arrays of any sizes.
        canvas: ``(Hc, Wc)``, the model's ``image_size``.

    Returns:
        ``(batch, valid_sizes)``: ``batch`` ``[B, 3, Hc, Wc]`` float32 in 0..255 with pad value
        127.5 on the right/bottom; ``valid_sizes`` the ``(Hv, Wv)`` of each resized image.
    """
    hc, wc = int(canvas[0]), int(canvas[1])
    batch = torch.full((len(images), 3, hc, wc), PAD_VALUE, dtype=torch.float32)
    valid = []
    for i, img in enumerate(images):
        hv, wv = fit_size(img.shape[0], img.shape[1], (hc, wc))
        if (hv, wv) != img.shape[:2]:
            img = np.array(Image.fromarray(img).resize((wv, hv), Image.BILINEAR))
        # [Hv, Wv, 3] uint8 -> [3, Hv, Wv] float32
        batch[i, :, :hv, :wv] = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
        valid.append((hv, wv))
    return batch, valid


def postprocess_variant(cfg: Any) -> str:
    """``cfg.postprocess.variant``, with ``"auto"`` resolved from ``cfg.model.reference``.

    ``model.reference`` selects the merging as well as the network (``docs/parity.md``,
    "Behaviour switches"): bytedance -> ``"bytedance"``, deeplab2 -> ``"deeplab2"``.
    """
    variant = cfg.postprocess.variant
    if variant != "auto":
        return variant
    return "deeplab2" if getattr(cfg.model, "reference", "bytedance") == "deeplab2" else "bytedance"


def _load_state(model: nn.Module, state: dict, source: str) -> None:
    """Strictly load ``state`` into ``model``; the error names ``source`` and the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        def fmt(keys):
            return ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "")
        parts = [f"{len(missing)} missing: {fmt(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {fmt(unexpected)}" if unexpected else "",
                 f"{len(wrong)} with another shape: {fmt(wrong)}" if wrong else ""]
        raise ValueError(f"{source}: weights do not fit the model built from the config ("
                         + "; ".join(p for p in parts if p) + ")")
    model.load_state_dict(state, strict=True)


def _read_weights(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        from kmax_deeplab.checkpoints.native import load_native

        return load_native(path)[1]
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path}: cannot read safetensors weights ({e})") from None
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file or checkpoint folder")
    raise ValueError(f"{path}: weights must be a checkpoint folder (model.safetensors + "
                     "config.yaml) or a .safetensors file; convert other formats with kmax convert")


def dataset_meta(cfg: Any):
    """The catalog entry of ``cfg.data.dataset``, checked against ``cfg.model.num_classes``.

    Raises:
        ValueError: the dataset's class count differs from the model's.
    """
    from kmax_deeplab.data.catalog import get_dataset_meta

    meta = get_dataset_meta(cfg.data.dataset)
    if meta.num_classes != cfg.model.num_classes:
        raise ValueError(f"config: model.num_classes={cfg.model.num_classes} but dataset "
                         f"{cfg.data.dataset!r} has {meta.num_classes} classes; set data.dataset "
                         "to the dataset the weights were trained on")
    return meta


class Predictor:
    """Panoptic prediction for images of any size with a mask-transformer model.

    Example:
        >>> predictor = Predictor.from_zoo("kmax_r50_coco")  # doctest: +SKIP
        >>> out = predictor("photo.jpg")                     # doctest: +SKIP
        >>> out["panoptic"].shape, out["segments_info"][0]    # doctest: +SKIP

    Args:
        model: a module taking ``[B, 3, Hc, Wc]`` float32 RGB 0..255 at ``cfg.model.image_size``
            and returning a ``MaskTransformerOutput``.
        cfg: the run :class:`~kmax_deeplab.config.Config` (``model.image_size``,
            ``postprocess`` thresholds, ``data.dataset``).
        meta: a ``DatasetMeta`` (``is_thing``, ``train_id_to_category_id``, ``categories``);
            default: the catalog entry of ``cfg.data.dataset``.
        device: torch device to run on.
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the autocast dtype of the forward pass
            (post-processing always runs in float32).
        compile: wrap the model in ``torch.compile``.
        batch_size: images per forward pass when a list is given.
        channels_last: run the model and its input in ``torch.channels_last`` memory format
            (~20% faster at 1281² on CPU, see ``docs/benchmarks.md``, and the layout tensor
            cores prefer). Not bit-identical to the contiguous format: convolutions sum in
            another order (~1e-6 relative from the first axial block), which the k-means
            argmax can amplify into a few changed mask owners (``docs/parity.md``, "Fast paths").
    """

    def __init__(self, model: nn.Module, cfg: Any, *, meta: Any = None,
                 device: str | torch.device = "cpu", dtype: str = "fp32", compile: bool = False,
                 batch_size: int = 1, channels_last: bool = True):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cfg = cfg
        self.meta = meta if meta is not None else dataset_meta(cfg)
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self._forward = torch.compile(self.model) if compile else self.model
        self.canvas = tuple(int(s) for s in cfg.model.image_size)
        self.is_thing = [bool(self.meta.is_thing(i)) for i in range(self.meta.num_classes)]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_config(cls, cfg: Any, weights: str | Path | None = None, **kwargs) -> "Predictor":
        """Build the model of ``cfg`` and load ``weights`` (random weights when ``None``).

        Args:
            cfg: a :class:`~kmax_deeplab.config.Config`.
            weights: a native checkpoint folder (``model.safetensors`` + ``config.yaml``) or a
                ``.safetensors`` file with our key names.
            **kwargs: passed to :class:`Predictor`.

        Raises:
            FileNotFoundError / ValueError: unreadable weights, or keys/shapes that do not
                fit the model (the message lists them).
        """
        from kmax_deeplab.modeling.kmax import build_kmax

        model = build_kmax(cfg.model)
        if weights is None:
            warnings.warn("Predictor: no weights given; the model has RANDOM weights and its "
                          "predictions are meaningless", UserWarning, stacklevel=2)
        else:
            _load_state(model, _read_weights(weights), str(weights))
        return cls(model, cfg, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> "Predictor":
        """Load a native checkpoint folder (its ``config.yaml`` builds the model)."""
        from kmax_deeplab.checkpoints.native import load_native
        from kmax_deeplab.modeling.kmax import build_kmax

        cfg, state = load_native(folder)
        model = build_kmax(cfg.model)
        _load_state(model, state, str(folder))
        return cls(model, cfg, **kwargs)

    @classmethod
    def from_zoo(cls, name: str, **kwargs) -> "Predictor":
        """Fetch (or reuse the cached) model-zoo checkpoint ``name`` and load it."""
        from kmax_deeplab.checkpoints.zoo import get_zoo_checkpoint

        return cls.from_pretrained(get_zoo_checkpoint(name), **kwargs)

    # ------------------------------------------------------------------ inference
    def _postprocess_kwargs(self) -> dict:
        pp = self.cfg.postprocess
        return dict(is_thing=self.is_thing,
                    train_id_to_category_id=list(self.meta.train_id_to_category_id),
                    variant=postprocess_variant(self.cfg), thing_threshold=pp.thing_threshold,
                    stuff_threshold=pp.stuff_threshold, overlap_threshold=pp.overlap_threshold,
                    pixel_confidence_threshold=pp.pixel_confidence_threshold,
                    class_weight=pp.class_weight, mask_weight=pp.mask_weight,
                    thing_area_limit=pp.thing_area_limit, stuff_area_limit=pp.stuff_area_limit)

    def forward_batch(self, images: Sequence[np.ndarray]) -> dict:
        """Run the model on RGB uint8 arrays; returns the raw output and valid sizes."""
        batch, valid = preprocess(images, self.canvas)
        batch = batch.to(self.device, memory_format=self.memory_format)
        with torch.inference_mode(), torch.autocast(
                self.device.type, dtype=DTYPES[self.dtype], enabled=self.dtype != "fp32"):
            out = self._forward(batch)
        return {"pred_logits": out["pred_logits"].float(), "pred_masks": out["pred_masks"].float(),
                "valid_sizes": valid}

    def predict_arrays(self, images: Sequence[np.ndarray], *, semantic: bool = False) -> list[dict]:
        """Predict a batch of RGB ``[H, W, 3]`` uint8 arrays in one forward pass.

        Returns:
            One dict per image: ``panoptic`` ``[H, W]`` int32 numpy (0 = void),
            ``segments_info`` (``id``, ``category_id``, ``isthing``, ``score``, ``area``) and,
            with ``semantic=True``, ``semantic`` ``[H, W]`` int64 train ids.
        """
        raw = self.forward_batch(images)
        kwargs = self._postprocess_kwargs()
        results = []
        with torch.inference_mode():
            for i, img in enumerate(images):
                geometry = dict(canvas_size=self.canvas, valid_size=raw["valid_sizes"][i],
                                output_size=img.shape[:2])
                pan, info = panoptic_inference(raw["pred_logits"][i], raw["pred_masks"][i],
                                               **geometry, **kwargs)
                result = {"panoptic": pan.cpu().numpy(), "segments_info": info}
                if semantic:
                    result["semantic"] = semantic_inference(
                        raw["pred_logits"][i], raw["pred_masks"][i], **geometry).cpu().numpy()
                results.append(result)
        return results

    def __call__(self, images: ImageInput | Iterable[ImageInput], *, semantic: bool = False,
                 batch_size: int | None = None):
        """Predict one image or a list of images (paths, PIL images or uint8 arrays).

        Returns:
            A dict for one image, or a list of dicts for a list (see :meth:`predict_arrays`).

        Raises:
            FileNotFoundError / ValueError / TypeError: an unreadable input (named).
        """
        single = isinstance(images, (str, Path, np.ndarray, Image.Image))
        items = [images] if single else list(images)
        bs = batch_size or self.batch_size
        results: list[dict] = []
        for start in range(0, len(items), bs):
            arrays = [load_image(x) for x in items[start:start + bs]]
            results += self.predict_arrays(arrays, semantic=semantic)
        return results[0] if single else results
