"""kMaX-DeepLab's row of the family table (``modeling/families.py``, key ``"kmax"``).

Each function maps the run config (duck typed) to one part: the model (:func:`build_kmax`),
the criterion (``losses.build_criterion``), the mask-wise post-processing (spec §3), the fixed
129/641/1281-style canvas with ``(x - 127.5) / 127.5`` (§1), AdamW with the bytedance parameter
groups and warmup + poly (§4), and the deeplab2 / detectron2 / ImageNet checkpoint importers
(§5). Heavy modules are imported inside the functions.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kmax_deeplab.checkpoints.imagenet import import_imagenet_backbone
from kmax_deeplab.modeling.kmax.config import KMaXLossConfig, KMaXModelConfig, KMaXPostProcessConfig

# The output contract of kMaX: [N, C+1] logits with void last, masks competing per pixel.
CLASS_ACTIVATION = "softmax_void"
MASK_ACTIVATION = "softmax"


def build_model(cfg: Any):
    """:func:`~kmax_deeplab.modeling.kmax.model.build_kmax` of ``cfg.model``."""
    from kmax_deeplab.modeling.kmax.model import build_kmax

    return build_kmax(cfg.model)


def build_criterion(cfg: Any):
    """:class:`~kmax_deeplab.losses.criterion.KMaXCriterion` of ``cfg.loss``."""
    from kmax_deeplab.losses.criterion import build_criterion as build

    return build(cfg.loss, cfg.model.num_classes)


def postprocess_variant(cfg: Any) -> str:
    """``cfg.postprocess.variant``, with ``"auto"`` resolved from ``cfg.model.reference``.

    ``model.reference`` selects the merging as well as the network (``docs/parity.md``,
    "Behaviour switches"): bytedance -> ``"bytedance"``, deeplab2 -> ``"deeplab2"`` (``>=``
    thresholds, area limits, merging at crop resolution).
    """
    variant = cfg.postprocess.variant
    if variant != "auto":
        return variant
    return "deeplab2" if getattr(cfg.model, "reference", "bytedance") == "deeplab2" else "bytedance"


def postprocess(output: Mapping[str, Any], *, cfg: Any, is_thing: Sequence[bool],
                train_id_to_category_id: Sequence[int], canvas_size: Sequence[int],
                valid_size: Sequence[int], output_size: Sequence[int], semantic: bool = False) -> dict:
    """Mask-wise merging (:func:`~kmax_deeplab.modeling.postprocess.panoptic_inference`).

    Args:
        output: ``pred_logits`` ``[N, C+1]`` and ``pred_masks`` ``[N, h, w]`` of one image.
        cfg: the run config (``cfg.postprocess`` thresholds; the variant per
            :func:`postprocess_variant`).
        semantic: also return ``semantic`` (argmax of the class x mask probabilities).

    Returns:
        ``{"panoptic": [Ho, Wo] int32, "segments_info": [...]}`` (+ ``"semantic"`` [Ho, Wo] int64).
    """
    from kmax_deeplab.modeling.postprocess import panoptic_inference, semantic_inference

    pp = cfg.postprocess
    geometry = dict(canvas_size=canvas_size, valid_size=valid_size, output_size=output_size)
    result = panoptic_inference(
        output["pred_logits"], output["pred_masks"], is_thing=is_thing,
        train_id_to_category_id=list(train_id_to_category_id), variant=postprocess_variant(cfg),
        thing_threshold=pp.thing_threshold, stuff_threshold=pp.stuff_threshold,
        overlap_threshold=pp.overlap_threshold,
        pixel_confidence_threshold=pp.pixel_confidence_threshold, class_weight=pp.class_weight,
        mask_weight=pp.mask_weight, thing_area_limit=pp.thing_area_limit,
        stuff_area_limit=pp.stuff_area_limit, class_activation=CLASS_ACTIVATION,
        mask_activation=MASK_ACTIVATION, **geometry)
    out = {"panoptic": result.panoptic, "segments_info": result.segments_info}
    if semantic:
        out["semantic"] = semantic_inference(output["pred_logits"], output["pred_masks"],
                                             class_activation=CLASS_ACTIVATION,
                                             mask_activation=MASK_ACTIVATION, **geometry)
    return out


def input_geometry(cfg: Any):
    """The fixed canvas ``cfg.model.image_size``, mean-grey padding, ``(x - 127.5) / 127.5``, and the
    test-time resize ``data.test_resize`` (``"reference"``: the rule of ``model.reference``) with
    ``data.test_min_size`` / ``test_max_size`` (-1: that reference's own values for the dataset).

    Raises:
        ValueError: an unknown ``data.test_resize``.
    """
    from kmax_deeplab.geometry import TEST_RESIZE_RULES, FixedCanvas

    data = cfg.data
    rule = getattr(data, "test_resize", "reference")
    if rule == "reference":
        rule = cfg.model.reference
    if rule not in TEST_RESIZE_RULES:
        raise ValueError(f"data.test_resize must be 'reference' or one of {TEST_RESIZE_RULES}, got {rule!r}")
    return FixedCanvas(tuple(int(s) for s in cfg.model.image_size), resize_rule=rule,
                       min_size=int(getattr(data, "test_min_size", -1)),
                       max_size=int(getattr(data, "test_max_size", -1)), dataset=str(data.dataset))


def check_config(cfg: Any) -> None:
    """kMaX trains at its test canvas (spec §4): ``data.crop_size`` must equal ``model.image_size``."""
    if tuple(cfg.data.crop_size) != tuple(cfg.model.image_size):
        raise ValueError(f"data.crop_size {tuple(cfg.data.crop_size)} must equal model.image_size "
                         f"{tuple(cfg.model.image_size)} (kMaX trains at the test canvas; spec §4)")


def build_optimizer(model, cfg: Any):
    """AdamW over the bytedance parameter groups (:func:`kmax_deeplab.solver.build_optimizer`)."""
    from kmax_deeplab.solver import build_optimizer as build

    return build(model, cfg.solver)



def import_deeplab2(src, model, cfg: Any, strict: bool = True):
    """deeplab2 TF checkpoint (prefix, ``.index`` or archive folder) -> our state dict."""
    from kmax_deeplab.checkpoints.deeplab2_tf import load_deeplab2_checkpoint

    return load_deeplab2_checkpoint(src, model, dataset=cfg.data.dataset, num_classes=cfg.model.num_classes,
                                    backbone=cfg.model.backbone, strict=strict)


def import_detectron2(src, model, cfg: Any, strict: bool = True):
    """bytedance detectron2 ``.pth`` / ``.pkl`` -> our state dict."""
    from kmax_deeplab.checkpoints.detectron2 import load_detectron2_checkpoint

    return load_detectron2_checkpoint(src, model, strict=strict)



#: The keyword arguments of kMaX's ``Family`` row.
KMAX = dict(
    name="kmax",
    description="kMaX-DeepLab (k-means Mask Transformer, ECCV 2022)",
    sections={"model": KMaXModelConfig, "loss": KMaXLossConfig, "postprocess": KMaXPostProcessConfig},
    build_model=build_model,
    build_criterion=build_criterion,
    postprocess=postprocess,
    input_geometry=input_geometry,
    build_optimizer=build_optimizer,
    importers={"deeplab2": import_deeplab2, "detectron2": import_detectron2, "imagenet": import_imagenet_backbone},
    check_config=check_config,
    inference_keys=("pred_logits", "pred_masks"),
    class_activation=CLASS_ACTIVATION,
    mask_activation=MASK_ACTIVATION,
    mask_stride=4,
)
