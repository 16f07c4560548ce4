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
from kmax_deeplab.modeling.postprocess import semantic_probabilities

ImageInput = Union[np.ndarray, Image.Image, str, Path]

PAD_VALUE = 127.5  # kMaX's pad value (FixedCanvas.pixel_mean)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OUTPUT_FORMATS = ("coco", "detectron2")


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
    """Panoptic prediction for images of any size with a mask-transformer model; for a semantic
    model (``model.task == "semantic"``) semantic prediction (:meth:`predict_semantic`, also what
    calling it returns).

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
        output_format: ``"coco"`` (COCO-panoptic ``panoptic`` + ``segments_info``) or
            ``"detectron2"`` (``panoptic_seg``, ``sem_seg``, ``instances``), see
            :meth:`predict_arrays`.
    """

    def __init__(self, model: nn.Module, cfg: Any, *, meta: Any = None,
                 device: str | torch.device = "cpu", dtype: str = "fp32", compile: bool = False,
                 batch_size: int = 1, channels_last: bool = True, output_format: str = "coco"):
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        self.output_format = output_format
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
        from kmax_deeplab.modeling.families import task_of

        self.task = task_of(cfg)
        self.semantic_test = None
        if self.task == "semantic":  # whole / sliding window / TTA settings of the config
            from kmax_deeplab.engine.semantic_inference import SemanticTestConfig

            self.semantic_test = SemanticTestConfig.from_config(cfg)

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
        """Run the network on RGB uint8 arrays (pre-processing + forward, no post-processing).

        Returns:
            The family's ``inference_keys`` outputs (``pred_logits [B, N, C+1]``,
            ``pred_masks [B, N, h, w]`` for kMaX) in float32, plus ``valid_sizes``
            (``(Hv, Wv)`` per image) and ``batch_size`` (``(H, W)`` of the model input): the
            ``outputs`` that :meth:`postprocess` and the ``post_process_*`` methods take, so
            thresholds can be changed without running the network again.
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

    def postprocess(self, raw: dict, output_sizes: Sequence[Sequence[int]], *,
                    semantic: bool = False, output_format: str | None = None,
                    **overrides: Any) -> list[dict]:
        """Merge the network outputs of :meth:`forward_batch` into predictions (the family's
        post-processing; no forward pass).

        Args:
            raw: the dict :meth:`forward_batch` returned.
            output_sizes: ``(H, W)`` of each original image.
            semantic: also return the semantic map (``"coco"`` format).
            output_format: ``"coco"`` or ``"detectron2"``; default the predictor's.
            **overrides: ``postprocess`` config fields replacing the config's values for this
                call (``thing_threshold``, ``overlap_threshold``, ``thing_area_limit`` ...).

        Returns:
            See :meth:`predict_arrays` (``"coco"`` results also carry ``instances`` when the
            family's post-processing returns them).

        Raises:
            ValueError: an unknown ``output_format`` or override name.
        """
        import copy
        import dataclasses

        fmt = output_format or self.output_format
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        cfg = self.cfg
        if overrides:
            known = {f.name for f in dataclasses.fields(cfg.postprocess)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ValueError(f"postprocess overrides {unknown} are not fields of the "
                                 f"postprocess config ({sorted(known)})")
            cfg = copy.copy(cfg)
            cfg.postprocess = dataclasses.replace(self.cfg.postprocess, **overrides)
        keys = [k for k in self.family.inference_keys if k in raw]
        results = []
        with torch.inference_mode():
            for i, size in enumerate(output_sizes):
                geometry = dict(canvas_size=raw["batch_size"], valid_size=raw["valid_sizes"][i],
                                output_size=tuple(size))
                out = self.family.postprocess(
                    {k: raw[k][i] for k in keys}, cfg=cfg, is_thing=self.is_thing,
                    train_id_to_category_id=list(self.meta.train_id_to_category_id),
                    semantic=semantic and fmt == "coco", **geometry)
                if fmt == "detectron2":
                    results.append(self._detectron2_result(raw, i, geometry, out["panoptic"],
                                                           out["segments_info"]))
                    continue
                result = {"panoptic": out["panoptic"].cpu().numpy(),
                          "segments_info": out["segments_info"]}
                if semantic:
                    result["semantic"] = out["semantic"].cpu().numpy()
                if out.get("instances") is not None:
                    result["instances"] = out["instances"]
                results.append(result)
        return results

    def _detectron2_result(self, raw: dict, i: int, geometry: dict, pan: torch.Tensor,
                           info: list[dict]) -> dict:
        """detectron2 / Mask2Former's output dict for one image (train ids as category ids)."""
        train_id = {int(c): t for t, c in enumerate(self.meta.train_id_to_category_id)}
        segments = [{"id": s["id"], "isthing": s["isthing"], "category_id": train_id[s["category_id"]],
                     "score": s["score"], "area": s["area"]} for s in info]
        things = [s for s in segments if s["isthing"]]
        masks = torch.stack([pan == s["id"] for s in things]) if things else \
            torch.zeros((0, *pan.shape), dtype=torch.bool)
        return {
            "panoptic_seg": (pan, segments),
            "sem_seg": semantic_probabilities(raw["pred_logits"][i], raw["pred_masks"][i],
                                              class_activation=self.family.class_activation,
                                              mask_activation=self.family.mask_activation,
                                              **geometry),
            "instances": {"image_size": tuple(pan.shape), "pred_masks": masks,
                          "pred_classes": torch.tensor([s["category_id"] for s in things],
                                                       dtype=torch.int64),
                          "scores": torch.tensor([s["score"] for s in things],
                                                 dtype=torch.float32)},
        }

    def predict_semantic(self, image: np.ndarray, *, probabilities: bool = False) -> dict:
        """Semantic prediction of one RGB ``[H, W, 3]`` uint8 array with a semantic model
        (``model.task == "semantic"``): :func:`~kmax_deeplab.engine.semantic_inference.semantic_inference`
        with the config's test settings (:attr:`semantic_test`: whole image or sliding window,
        flip / multi-scale), the model's eval-mode ``forward(x)["sem_seg"]`` (logits
        ``[1, C, h, w]`` at the input size) run per pass or window under the predictor's
        device, dtype and memory format.

        Returns:
            ``{"semantic": int64 [H, W] train ids (argmax of the averaged probabilities)}``,
            with ``probabilities=True`` also ``"probabilities"``: float32 ``[C, H, W]`` tensor.

        Raises:
            ValueError: the model is not a semantic model, or returns no ``sem_seg`` logits
                at its input size.
        """
        from kmax_deeplab.engine.semantic_inference import semantic_inference

        if self.semantic_test is None:
            raise ValueError(f"predict_semantic needs a semantic model (model.task 'semantic'); this "
                             f"{self.cfg.model.meta_architecture!r} model is {self.task!r}")

        def model_fn(x: torch.Tensor) -> torch.Tensor:
            x = x.to(self.device, memory_format=self.memory_format)
            with torch.autocast(self.device.type, dtype=DTYPES[self.dtype], enabled=self.dtype != "fp32"):
                out = self._forward(x)
            logits = out.get("sem_seg") if hasattr(out, "get") else None
            if logits is None:
                raise ValueError(f"the {self.cfg.model.meta_architecture!r} model returned no 'sem_seg' logits")
            return logits.float()

        with torch.inference_mode():
            probs = semantic_inference(model_fn, image, self.semantic_test)
        result = {"semantic": probs.argmax(0).cpu().numpy().astype(np.int64)}
        if probabilities:
            result["probabilities"] = probs.cpu()
        return result

    def predict_arrays(self, images: Sequence[np.ndarray], *, semantic: bool = False,
                       output_format: str | None = None) -> list[dict]:
        """Predict a batch of RGB ``[H, W, 3]`` uint8 arrays in one forward pass (a semantic
        model: :meth:`predict_semantic` of each, ``{"semantic": int64 [H, W] train ids}``).

        Returns:
            ``"coco"`` format: one dict per image, ``panoptic`` ``[H, W]`` int32 numpy
            (0 = void), ``segments_info`` (``id``, ``category_id``, ``isthing``, ``score``,
            ``area``) and, with ``semantic=True``, ``semantic`` ``[H, W]`` int64 train ids.
            ``"detectron2"`` format: ``panoptic_seg`` = ``(ids [H, W] int32 tensor,
            segments_info)`` with the train id as ``category_id`` (detectron2's contiguous
            id), ``sem_seg`` ``[C, H, W]`` float32 class probabilities, ``instances`` a dict of
            ``pred_masks [K, H, W]`` bool, ``pred_classes [K]`` int64, ``scores [K]``,
            ``image_size`` (the thing segments; detectron2 is not imported).
        """
        if self.task == "semantic":
            return [self.predict_semantic(img) for img in images]
        raw = self.forward_batch(images)
        return self.postprocess(raw, [img.shape[:2] for img in images], semantic=semantic,
                                output_format=output_format)

    # ------------------------------------------------------------ Hugging Face style API
    def _hf_defaults(self) -> dict:
        pp = self.cfg.postprocess
        fields = ("thing_threshold", "stuff_threshold", "variant", "class_weight", "mask_weight",
                  "thing_area_limit", "stuff_area_limit")  # those the family's section has
        return dict(is_thing=self.is_thing, class_activation=self.family.class_activation,
                    mask_activation=self.family.mask_activation,
                    **{k: getattr(pp, k) for k in fields if hasattr(pp, k)})

    def post_process_panoptic_segmentation(self, outputs: dict, threshold: float | None = None,
                                           mask_threshold: float | None = None,
                                           overlap_mask_area_threshold: float | None = None,
                                           label_ids_to_fuse: Sequence[int] | None = None,
                                           target_sizes: Any = None) -> list[dict]:
        """:func:`kmax_deeplab.modeling.hf_postprocess.post_process_panoptic_segmentation`
        with the config's thresholds as defaults (``None`` = the config value)."""
        from kmax_deeplab.modeling.hf_postprocess import post_process_panoptic_segmentation

        pp = self.cfg.postprocess
        return post_process_panoptic_segmentation(
            outputs, threshold,
            pp.pixel_confidence_threshold if mask_threshold is None else mask_threshold,
            pp.overlap_threshold if overlap_mask_area_threshold is None
            else overlap_mask_area_threshold, label_ids_to_fuse, target_sizes,
            **self._hf_defaults())

    def post_process_semantic_segmentation(self, outputs: dict, target_sizes: Any = None):
        """:func:`kmax_deeplab.modeling.hf_postprocess.post_process_semantic_segmentation`."""
        from kmax_deeplab.modeling.hf_postprocess import post_process_semantic_segmentation

        return post_process_semantic_segmentation(
            outputs, target_sizes, class_activation=self.family.class_activation,
            mask_activation=self.family.mask_activation)

    def post_process_instance_segmentation(self, outputs: dict, threshold: float | None = None,
                                           mask_threshold: float | None = None,
                                           overlap_mask_area_threshold: float | None = None,
                                           target_sizes: Any = None,
                                           return_binary_maps: bool = False) -> list[dict]:
        """:func:`kmax_deeplab.modeling.hf_postprocess.post_process_instance_segmentation`
        with the config's thresholds as defaults."""
        from kmax_deeplab.modeling.hf_postprocess import post_process_instance_segmentation

        pp = self.cfg.postprocess
        return post_process_instance_segmentation(
            outputs, threshold,
            pp.pixel_confidence_threshold if mask_threshold is None else mask_threshold,
            pp.overlap_threshold if overlap_mask_area_threshold is None
            else overlap_mask_area_threshold, target_sizes, return_binary_maps,
            **self._hf_defaults())

    def __call__(self, images: ImageInput | Iterable[ImageInput], *, semantic: bool = False,
                 batch_size: int | None = None, output_format: str | None = None):
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
            results += self.predict_arrays(arrays, semantic=semantic, output_format=output_format)
        return results[0] if single else results
