"""``Predictor``: images of any size in, COCO-panoptic predictions at the original size out.

Model-family agnostic: the config's family (:data:`kmax_deeplab.modeling.families.FAMILIES`)
builds the model, declares the input geometry (kMaX, spec ``kmax_deeplab.md`` §1 test time:
resized by the reference's own rule, ``data.test_resize`` / ``model.reference``, to fit the canvas
``cfg.model.image_size`` (:func:`kmax_deeplab.geometry.inference_size`), padded right/bottom with 127.5,
i.e. 0 after the model's ``x/127.5 - 1``; :mod:`kmax_deeplab.geometry`) and post-processes each
image (kMaX: the mask logits upsampled to the canvas, cropped to the image and resized back,
then mask-wise merging, §3).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from kmax_deeplab.api import read_weights
from kmax_deeplab.checkpoints.native import load_state_strict
from kmax_deeplab.geometry import FixedCanvas, fit_size  # noqa: F401  (fit_size: old import path)
from kmax_deeplab.modeling.families import family_of

ImageInput = Union[np.ndarray, Image.Image, str, Path]

PAD_VALUE = 127.5  # kMaX's pad value (FixedCanvas.pixel_mean)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_image(image: ImageInput, *, max_pixels: int | None = None) -> np.ndarray:
    """Return ``image`` as an RGB ``[H, W, 3]`` uint8 array, exactly as training reads it.

    Files go through :func:`kmax_deeplab.data.image_io.load_rgb_image` (the one reader of
    predict, training and validation: EXIF orientation, 16-bit and float images scaled,
    palette/CMYK/LA converted), PIL images and arrays through
    :func:`~kmax_deeplab.data.image_io.image_to_rgb` (same conversion).

    Args:
        image: a path, a PIL image (any mode), or an array ``[H, W]``, ``[H, W, 1..4]`` of
            uint8, uint16, bool or float (see ``image_to_rgb`` for the value ranges).
        max_pixels: refuse files with more pixels (default: Pillow's decompression-bomb
            limit, ``image_io.DEFAULT_MAX_PIXELS``).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image (``ImageReadError``), has too many
            pixels (``ImageTooLargeError``), or the array is empty or has a bad shape/dtype.
        TypeError: another kind of object.
    """
    from kmax_deeplab.data import image_io

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        limit = image_io.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        return image_io.load_rgb_image(path, dtype=np.uint8, max_pixels=limit)
    if isinstance(image, (Image.Image, np.ndarray)):
        return image_io.image_to_rgb(image, np.uint8)
    raise TypeError(f"unsupported image type {type(image).__name__}; "
                    "give a path, a PIL image or a numpy array")


def preprocess(images: Sequence[np.ndarray], canvas: Sequence[int]) -> tuple[torch.Tensor, list]:
    """Resize (bilinear) and pad RGB uint8 images onto a fixed canvas (kMaX geometry).

    Args:
        images: RGB ``[H, W, 3]`` uint8 arrays of any sizes.
        canvas: ``(Hc, Wc)``, the model's ``image_size``.

    Returns:
        ``(batch, valid_sizes)``: ``batch`` ``[B, 3, Hc, Wc]`` float32 in 0..255 with pad value
        127.5 on the right/bottom; ``valid_sizes`` the ``(Hv, Wv)`` of each resized image.
    """
    return FixedCanvas(tuple(int(s) for s in canvas)).preprocess(images)


_load_state = load_state_strict  # old private name
_read_weights = read_weights


def dataset_meta(cfg: Any):
    """The catalog entry of ``cfg.data.dataset``, checked against ``cfg.model.num_classes``.

    Raises:
        ValueError: the dataset's class count differs from the model's.
    """
    from kmax_deeplab.data.catalog import get_dataset_meta

    meta = get_dataset_meta(cfg.data.dataset)
    if getattr(cfg.model, "task", "panoptic") == "instance" and meta.num_classes != cfg.model.num_classes:
        # an instance model predicts the thing classes only, in their train-id order (K-Net)
        from kmax_deeplab.data.catalog import meta_from_categories

        meta = meta_from_categories(f"{meta.name}_things", [c for c in meta.categories if c["isthing"]],
                                    label_divisor=meta.label_divisor, ignore_label=meta.ignore_label)
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
        model: a module taking ``[B, 3, H, W]`` float32 RGB 0..255 as the family's input
            geometry lays it out, returning a ``MaskTransformerOutput``.
        cfg: the run :class:`~kmax_deeplab.config.Config` (``model.meta_architecture`` picks
            the family: geometry and post-processing; ``postprocess`` thresholds,
            ``data.dataset``).
        meta: a ``DatasetMeta`` (``is_thing``, ``train_id_to_category_id``, ``categories``);
            default: the catalog entry of ``cfg.data.dataset``.
        device: torch device to run on.
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the autocast dtype of the forward pass
            (post-processing always runs in float32).
        compile: wrap the model in ``torch.compile``.
        batch_size: images per forward pass when a list is given.
        channels_last: run the model and its input in ``torch.channels_last`` memory format
            (the same network, but other conv kernels: results differ by float rounding,
            ~1e-6 relative per layer, which the k-means argmax can amplify into changed pixels,
            see ``docs/parity.md``; ~20% faster at 1281² on CPU, see ``docs/benchmarks.md``, and
            the layout tensor cores prefer).
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
        self.family = family_of(cfg)
        self.geometry = self.family.input_geometry(cfg)
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
        model = family_of(cfg).build_model(cfg)
        if weights is None:
            warnings.warn("Predictor: no weights given; the model has RANDOM weights and its "
                          "predictions are meaningless", UserWarning, stacklevel=2)
        else:
            load_state_strict(model, read_weights(weights), str(weights))
        return cls(model, cfg, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, overrides: Sequence[str] = (), **kwargs) -> "Predictor":
        """Load a native checkpoint folder (its ``config.yaml``, with ``key=value`` overrides,
        builds the model).

        Raises:
            ValueError: an override names an unknown key, or the weights do not fit.
        """
        from kmax_deeplab.checkpoints.native import load_native
        from kmax_deeplab.config import apply_overrides

        cfg, state = load_native(folder)
        if overrides:
            cfg = apply_overrides(cfg, overrides)
        model = family_of(cfg).build_model(cfg)
        load_state_strict(model, state, str(folder))
        return cls(model, cfg, **kwargs)

    @classmethod
    def from_zoo(cls, name: str, *, overrides: Sequence[str] = (), **kwargs) -> "Predictor":
        """Fetch (or reuse the cached) model-zoo checkpoint ``name`` and load it (see
        :meth:`from_pretrained` for ``overrides``)."""
        from kmax_deeplab.checkpoints.zoo import get_zoo_checkpoint

        return cls.from_pretrained(get_zoo_checkpoint(name), overrides=overrides, **kwargs)

    # ------------------------------------------------------------------ inference
    def forward_batch(self, images: Sequence[np.ndarray]) -> dict:
        """Run the model on RGB uint8 arrays.

        Returns:
            The family's ``inference_keys`` outputs (``pred_logits``, ``pred_masks`` for kMaX)
            in float32, plus ``valid_sizes`` (``(Hv, Wv)`` per image) and ``batch_size``
            (``(H, W)`` of the model input).
        """
        batch, valid = self.geometry.preprocess(images)
        batch = batch.to(self.device, memory_format=self.memory_format)
        with torch.inference_mode(), torch.autocast(
                self.device.type, dtype=DTYPES[self.dtype], enabled=self.dtype != "fp32"):
            out = self._forward(batch)
        raw = {k: out[k].float() for k in self.family.inference_keys if out.get(k) is not None}
        raw["valid_sizes"] = valid
        raw["batch_size"] = tuple(batch.shape[-2:])
        return raw

    def predict_arrays(self, images: Sequence[np.ndarray], *, semantic: bool = False) -> list[dict]:
        """Predict a batch of RGB ``[H, W, 3]`` uint8 arrays in one forward pass.

        Returns:
            One dict per image: ``panoptic`` ``[H, W]`` int32 numpy (0 = void),
            ``segments_info`` (``id``, ``category_id``, ``isthing``, ``score``, ``area``),
            with ``semantic=True`` ``semantic`` ``[H, W]`` int64 train ids, and ``instances``
            when the family's post-processing returns them.
        """
        raw = self.forward_batch(images)
        keys = [k for k in self.family.inference_keys if k in raw]
        results = []
        with torch.inference_mode():
            for i, img in enumerate(images):
                out = self.family.postprocess(
                    {k: raw[k][i] for k in keys}, cfg=self.cfg, is_thing=self.is_thing,
                    train_id_to_category_id=list(self.meta.train_id_to_category_id),
                    canvas_size=raw["batch_size"], valid_size=raw["valid_sizes"][i],
                    output_size=img.shape[:2], semantic=semantic)
                result = {"panoptic": out["panoptic"].cpu().numpy(), "segments_info": out["segments_info"]}
                if semantic:
                    result["semantic"] = out["semantic"].cpu().numpy()
                if out.get("instances") is not None:
                    result["instances"] = out["instances"]
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
