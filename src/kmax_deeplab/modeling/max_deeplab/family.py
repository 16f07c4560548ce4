"""MaX-DeepLab's row of the family table (``modeling/families.py``, key ``"max_deeplab"``).

The model (:func:`~kmax_deeplab.modeling.max_deeplab.model.build_max_deeplab`), the criterion
(:class:`~kmax_deeplab.losses.max_deeplab.MaXCriterion`), the "pixelwise" post-processing
(spec §4), the fixed canvas with ``(x - 127.5) / 127.5`` (§1), Adam (eps 1e-7, no weight decay)
with deeplab2's 0.1x LR rule on the ImageNet-pretrained encoder part and warmup + poly (§5),
and the deeplab2 TF checkpoint importers (§7, §10: ``deeplab2`` for the COCO checkpoints,
``imagenet`` for the ImageNet axial-backbone initial checkpoints). Heavy modules are imported inside the
functions.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kmax_deeplab.modeling.max_deeplab.config import (
    VARIANT_BACKBONES,
    MaXLossConfig,
    MaXModelConfig,
    MaXPostProcessConfig,
)

#: deeplab2 (``trainer/optimizer.py`` via ``axial_resnet.EXTRA`` / ``MEMORY_FEATURE`` and
#: ``axial_block_groups.TRANSFORMER``): an encoder variable whose name contains none of these
#: is ImageNet-pretrained and trains at ``backbone_lr_multiplier`` x LR.
NOT_PRETRAINED_KEYWORDS = ("transformer", "extra", "memory_feature")


def is_pretrained_encoder_parameter(name: str) -> bool:
    """deeplab2's backbone-optimizer rule on our parameter names (``encoder.`` prefix)."""
    return name.startswith("encoder.") and not any(k in name for k in NOT_PRETRAINED_KEYWORDS)


def build_model(cfg: Any):
    """:func:`~kmax_deeplab.modeling.max_deeplab.model.build_max_deeplab` of ``cfg.model``."""
    from kmax_deeplab.modeling.max_deeplab.model import build_max_deeplab

    return build_max_deeplab(cfg.model)


def _thing_train_ids(cfg: Any) -> list[int]:
    from kmax_deeplab.data.catalog import get_dataset_meta

    meta = get_dataset_meta(cfg.data.dataset)
    if meta.num_classes != cfg.model.num_classes:
        raise ValueError(f"model.num_classes {cfg.model.num_classes} != {meta.num_classes} classes of "
                         f"data.dataset {cfg.data.dataset!r}")
    return sorted(meta.thing_train_ids)


def build_criterion(cfg: Any):
    """:class:`~kmax_deeplab.losses.max_deeplab.MaXCriterion` of ``cfg.loss`` (thing ids from the catalog)."""
    from kmax_deeplab.losses.max_deeplab import MaXCriterion

    loss = cfg.loss
    weights = {"loss_cls": loss.class_weight, "loss_dice": loss.dice_weight, "loss_mask_id": loss.mask_id_weight,
               "loss_insdis": loss.instance_discrimination_weight, "loss_sem": loss.semantic_weight}
    if cfg.model.aux_semantic == "none":
        weights["loss_sem"] = 0.0
    return MaXCriterion(cfg.model.num_classes, _thing_train_ids(cfg), weight_dict=weights,
                        focal_alpha=loss.focal_alpha, insdis_temperature=loss.instance_discrimination_temperature)


def postprocess(output: Mapping[str, Any], *, cfg: Any, is_thing: Sequence[bool],
                train_id_to_category_id: Sequence[int], canvas_size: Sequence[int],
                valid_size: Sequence[int], output_size: Sequence[int], semantic: bool = False) -> dict:
    """"pixelwise" merging (:func:`~kmax_deeplab.modeling.postprocess.pixelwise_panoptic_inference`).

    Returns:
        ``{"panoptic": [Ho, Wo] int32, "segments_info": [...]}`` (+ ``"semantic"`` [Ho, Wo] int64:
        the class of each pixel's argmax slot, deeplab2's threshold-free second pass).
    """
    from kmax_deeplab.modeling.postprocess import pixelwise_panoptic_inference, pixelwise_semantic_inference

    pp = cfg.postprocess
    geometry = dict(canvas_size=canvas_size, valid_size=valid_size, output_size=output_size)
    pan, info = pixelwise_panoptic_inference(
        output["pred_logits"], output["pred_masks"], is_thing=is_thing,
        train_id_to_category_id=list(train_id_to_category_id), class_threshold=pp.class_threshold,
        pixel_confidence_threshold=pp.pixel_confidence_threshold, thing_area_limit=pp.thing_area_limit,
        stuff_area_limit=pp.stuff_area_limit, **geometry)
    result = {"panoptic": pan, "segments_info": info}
    if semantic:
        result["semantic"] = pixelwise_semantic_inference(output["pred_logits"], output["pred_masks"], **geometry)
    return result


def input_geometry(cfg: Any):
    """The fixed canvas ``cfg.model.image_size``, mean-grey padding, ``(x - 127.5) / 127.5``."""
    from kmax_deeplab.geometry import FixedCanvas

    return FixedCanvas(tuple(int(s) for s in cfg.model.image_size))


def check_config(cfg: Any) -> None:
    """Variant and backbone agree; MaX trains at its test canvas (deeplab2: crop 641 or 1025)."""
    variant = cfg.model.variant
    if variant not in VARIANT_BACKBONES:
        raise ValueError(f"model.variant must be one of {sorted(VARIANT_BACKBONES)}, got {variant!r}")
    if cfg.model.backbone != VARIANT_BACKBONES[variant]:
        raise ValueError(f"model.backbone {cfg.model.backbone!r} does not match model.variant {variant!r} "
                         f"(expected {VARIANT_BACKBONES[variant]!r})")
    if tuple(cfg.data.crop_size) != tuple(cfg.model.image_size):
        raise ValueError(f"data.crop_size {tuple(cfg.data.crop_size)} must equal model.image_size "
                         f"{tuple(cfg.model.image_size)} (MaX-DeepLab trains at the test canvas; spec §5)")


def build_optimizer(model, cfg: Any):
    """``solver.optimizer`` (Adam for MaX) with deeplab2's two LR groups (:data:`NOT_PRETRAINED_KEYWORDS`)."""
    from kmax_deeplab.solver import build_optimizer as build

    rules = ((is_pretrained_encoder_parameter, float(cfg.solver.backbone_lr_multiplier)),)
    return build(model, cfg.solver, lr_rules=rules)



def import_deeplab2(src, model, cfg: Any, strict: bool = True):
    """deeplab2 MaX-DeepLab TF checkpoint (prefix, ``.index`` or archive folder) -> our state dict."""
    from kmax_deeplab.checkpoints.deeplab2_max import load_deeplab2_max_checkpoint

    return load_deeplab2_max_checkpoint(src, model, variant=cfg.model.variant, dataset=cfg.data.dataset,
                                        num_classes=cfg.model.num_classes, strict=strict)


def import_imagenet(src, model, cfg: Any, strict: bool = True):
    """deeplab2's ImageNet axial-backbone initial checkpoint into ``model``'s encoder backbone part.

    The published ``max_deeplab_{s,l}_backbone_imagenet1k_strong_training_strategy`` (TF;
    :data:`~kmax_deeplab.checkpoints.deeplab2_max.INIT_CHECKPOINTS`) sets exactly the
    parameters of :func:`is_pretrained_encoder_parameter`, as deeplab2's
    ``initial_checkpoint`` restore does; a one-line summary of what was left at its
    initialisation goes to stderr.
    """
    import sys

    from kmax_deeplab.checkpoints.deeplab2_max import load_deeplab2_max_init

    report = load_deeplab2_max_init(src, model, variant=cfg.model.variant, is_backbone=is_pretrained_encoder_parameter,
                                    strict=strict)
    print(f"kmax convert: {src}: {report.summary()}", file=sys.stderr)
    return model.state_dict()


#: The keyword arguments of MaX-DeepLab's ``Family`` row.
MAX_DEEPLAB = dict(
    name="max_deeplab",
    description="MaX-DeepLab (end-to-end mask transformer with a dual-path memory, CVPR 2021)",
    sections={"model": MaXModelConfig, "loss": MaXLossConfig, "postprocess": MaXPostProcessConfig},
    build_model=build_model,
    build_criterion=build_criterion,
    postprocess=postprocess,
    input_geometry=input_geometry,
    build_optimizer=build_optimizer,
    importers={"deeplab2": import_deeplab2, "imagenet": import_imagenet},
    check_config=check_config,
    inference_keys=("pred_logits", "pred_masks"),
    mask_stride=4,
)
