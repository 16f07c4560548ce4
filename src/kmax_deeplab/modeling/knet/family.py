"""K-Net's row of the family table (``modeling/families.py``, key ``"knet"``).

Model :func:`~kmax_deeplab.modeling.knet.model.build_knet`; criterion
:class:`~kmax_deeplab.losses.knet.KNetCriterion`; post-processing of knet.md §7; geometry
:class:`~kmax_deeplab.geometry.ResizePad` (1333x800 keeping the ratio, pad to 32, ImageNet
mean/std); AdamW with the backbone at ``solver.backbone_lr_multiplier`` (0.25) and weight decay
on every parameter (the original exempts nothing); warmup + step decay; importers ``mmdet``
(the released ``.pth``) and ``imagenet`` (torchvision ResNet, official Swin). Heavy modules load lazily.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kmax_deeplab.checkpoints.imagenet import import_imagenet_backbone
from kmax_deeplab.modeling.knet.config import TASKS, KNetLossConfig, KNetModelConfig, KNetPostProcessConfig


def build_model(cfg: Any):
    """:func:`~kmax_deeplab.modeling.knet.model.build_knet` of ``cfg.model``."""
    from kmax_deeplab.modeling.knet.model import build_knet

    m = cfg.model
    model = build_knet(task=m.task, backbone=m.backbone, num_classes=m.num_classes,
                       num_thing_classes=m.num_thing_classes, num_kernels=m.num_queries, num_stages=m.num_stages,
                       channels=m.hidden_dim, num_heads=m.num_heads, ffn_channels=m.ffn_dim,
                       num_groups=m.num_groups, frozen_stages=m.frozen_stages, norm_eval=m.norm_eval,
                       dcn=None if m.dcn == "none" else m.dcn, stage_with_dcn=m.stage_with_dcn,
                       backbone_drop_path=m.backbone_drop_path)
    if m.norm == "SyncBN":
        import torch

        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_criterion(cfg: Any):
    """:class:`~kmax_deeplab.losses.knet.KNetCriterion` of ``cfg.loss`` and ``cfg.model``."""
    from kmax_deeplab.losses.knet import build_knet_criterion

    return build_knet_criterion(cfg.loss, cfg.model)


def postprocess(output: Mapping[str, Any], *, cfg: Any, is_thing: Sequence[bool],
                train_id_to_category_id: Sequence[int], canvas_size: Sequence[int],
                valid_size: Sequence[int], output_size: Sequence[int], semantic: bool = False) -> dict:
    """K-Net inference of one image (knet.md §7).

    Panoptic models: :func:`~kmax_deeplab.modeling.knet.postprocess.knet_panoptic_inference`.
    Instance models: ``instances`` (``mask`` bool ``[Ho, Wo]``, ``category_id``, ``score`` and the
    COCO RLE ``segmentation``, best first) from
    :func:`~kmax_deeplab.modeling.knet.postprocess.knet_instance_inference`, and an all-void
    ``panoptic`` map with no segments (an instance model makes no panoptic claim).

    Args:
        output: ``pred_logits`` ``[N, C]`` and ``pred_masks`` ``[N, h, w]`` of one image.

    Raises:
        ValueError: ``semantic=True`` (K-Net's detector heads give no semantic map here).
    """
    import torch

    from kmax_deeplab.modeling.knet.postprocess import knet_instance_inference, knet_panoptic_inference

    if semantic:
        raise ValueError("K-Net (model.meta_architecture 'knet') has no semantic output; drop --semantic")
    pp, m = cfg.postprocess, cfg.model
    geometry = dict(canvas_size=canvas_size, valid_size=valid_size, output_size=output_size)
    if m.task == "instance":
        inst = knet_instance_inference(output["pred_logits"], output["pred_masks"], max_per_image=pp.max_per_image,
                                       mask_threshold=pp.mask_threshold,
                                       train_id_to_category_id=list(train_id_to_category_id), **geometry)
        return {"panoptic": torch.zeros(tuple(output_size), dtype=torch.int32), "segments_info": [],
                "instances": inst}
    pan, info = knet_panoptic_inference(output["pred_logits"], output["pred_masks"],
                                        num_thing_classes=m.num_thing_classes, num_kernels=m.num_queries,
                                        train_id_to_category_id=list(train_id_to_category_id),
                                        instance_score_threshold=pp.instance_score_threshold,
                                        overlap_threshold=pp.overlap_threshold, mask_threshold=pp.mask_threshold,
                                        **geometry)
    return {"panoptic": pan, "segments_info": info}


def input_geometry(cfg: Any):
    """:class:`~kmax_deeplab.geometry.ResizePad` at ``cfg.model.image_size`` = (short, long), ImageNet
    mean/std, pad to 32; training short side from ``cfg.model.train_short``."""
    from kmax_deeplab.geometry import ResizePad

    short, long_ = (int(s) for s in cfg.model.image_size)
    return ResizePad(short=short, long=long_, train_short=tuple(int(s) for s in cfg.model.train_short))


def check_config(cfg: Any) -> None:
    """Options K-Net cannot run with, each named."""
    m = cfg.model
    if m.task not in TASKS:
        raise ValueError(f"model.task must be one of {TASKS}, got {m.task!r}")
    if m.task == "instance" and m.num_classes != m.num_thing_classes:
        raise ValueError(f"model.task 'instance' trains on the thing classes only: model.num_classes "
                         f"({m.num_classes}) must equal model.num_thing_classes ({m.num_thing_classes})")
    if m.backbone_drop_path and not m.backbone.startswith("swin_"):
        raise ValueError(f"model.backbone_drop_path: K-Net's {m.backbone!r} has no stochastic depth (only swin_t / "
                         f"swin_l), got {m.backbone_drop_path}")
    if m.num_thing_classes > m.num_classes:
        raise ValueError(f"model.num_thing_classes ({m.num_thing_classes}) > model.num_classes ({m.num_classes})")


def build_optimizer(model, cfg: Any):
    """AdamW; ``backbone.*`` at ``solver.backbone_lr_multiplier`` x LR; decay on every parameter."""
    import torch

    from kmax_deeplab.solver import backbone_rules, build_param_groups

    s = cfg.solver
    groups = build_param_groups(model, base_lr=s.base_lr, weight_decay=s.weight_decay,
                                lr_rules=backbone_rules(s.backbone_lr_multiplier), decay_rule=lambda *a: True)
    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=s.base_lr, betas=tuple(s.betas), eps=s.eps, weight_decay=s.weight_decay)



def import_mmdet(src, model, cfg: Any, strict: bool = True):
    """Original K-Net ``.pth`` (``{"state_dict", "meta"}``) -> our state dict (checkpoints/mmdet.py)."""
    from kmax_deeplab.checkpoints.mmdet import load_mmdet_checkpoint

    return load_mmdet_checkpoint(src, model, strict=strict)



#: The keyword arguments of K-Net's ``Family`` row.
KNET = dict(
    name="knet",
    description="K-Net (kernel update heads, NeurIPS 2021), panoptic or instance",
    sections={"model": KNetModelConfig, "loss": KNetLossConfig, "postprocess": KNetPostProcessConfig},
    build_model=build_model,
    build_criterion=build_criterion,
    postprocess=postprocess,
    input_geometry=input_geometry,
    build_optimizer=build_optimizer,
    importers={"mmdet": import_mmdet, "imagenet": import_imagenet_backbone},
    check_config=check_config,
    inference_keys=("pred_logits", "pred_masks"),
    class_activation="sigmoid",
    mask_activation="sigmoid",
    mask_stride=4,
    full_resolution_targets=True,
    tasks=TASKS,
)
