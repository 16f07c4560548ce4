"""The semantic K-Net's row of the family table (``modeling/families.py``, key ``"knet_semantic"``).

Model :func:`~kmax_deeplab.modeling.knet_semantic.model.build_knet_semantic` (``task:
semantic``; eval output ``{"sem_seg": [B, K, H, W]}`` at the input size, the contract of
``engine/semantic_inference.py``); geometry
:class:`~kmax_deeplab.modeling.knet_semantic.geometry.SemanticResize` (mmseg's 2048x512
keep-ratio resize, ImageNet mean/std); AdamW (the configs: lr 1e-4, weight decay 5e-4 on
every parameter) with the shared warmup + step schedule; importer ``mmseg`` (the released
``.pth``, ``checkpoints/mmseg.py``). Heavy modules load lazily.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kmax_deeplab.checkpoints.imagenet import import_imagenet_backbone
from kmax_deeplab.modeling.knet_semantic.config import (
    BACKBONES,
    DECODE_HEADS,
    TASKS,
    KNetSemanticLossConfig,
    KNetSemanticModelConfig,
    KNetSemanticPostProcessConfig,
)


def build_model(cfg: Any):
    """:func:`~kmax_deeplab.modeling.knet_semantic.model.build_knet_semantic` of ``cfg.model``."""
    from kmax_deeplab.modeling.knet_semantic.model import build_knet_semantic

    m = cfg.model
    norm = "BN" if m.norm == "SyncBN" else m.norm
    model = build_knet_semantic(backbone=m.backbone, decode_head=m.decode_head, num_classes=m.num_classes,
                                dilated=m.dilated, head_channels=m.head_channels, updator_dim=m.updator_dim,
                                num_stages=m.num_stages, num_heads=m.num_heads, ffn_dim=m.ffn_dim,
                                auxiliary_head=m.auxiliary_head, aux_channels=m.aux_channels,
                                dropout_ratio=m.dropout_ratio, align_corners=m.align_corners, norm=norm,
                                backbone_drop_path=m.backbone_drop_path)
    if m.norm == "SyncBN":
        import torch

        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_criterion(cfg: Any):
    """The semantic K-Net's pixel cross-entropy criterion (``losses/knet_semantic.py``)."""
    from kmax_deeplab.losses.knet_semantic import build_knet_semantic_criterion

    return build_knet_semantic_criterion(cfg.loss)


def postprocess(output: Mapping[str, Any], *, cfg: Any, is_thing: Sequence[bool],
                train_id_to_category_id: Sequence[int], canvas_size: Sequence[int],
                valid_size: Sequence[int], output_size: Sequence[int], semantic: bool = False) -> dict:
    """Refused: a semantic model makes no panoptic claim.

    Raises:
        ValueError: always, naming the command that serves semantic models.
    """
    raise ValueError("model.task 'semantic' (model.meta_architecture 'knet_semantic') gives semantic logits, "
                     "not panoptic segments; use kmax predict --task semantic / kmax evaluate --task semantic")


def input_geometry(cfg: Any):
    """:class:`~kmax_deeplab.modeling.knet_semantic.geometry.SemanticResize` at ``cfg.model.image_size``
    = (short, long)."""
    from kmax_deeplab.modeling.knet_semantic.geometry import SemanticResize

    short, long_ = (int(s) for s in cfg.model.image_size)
    return SemanticResize(short=short, long=long_)


def check_config(cfg: Any) -> None:
    """Options the semantic K-Net cannot run with, each named (ValueError)."""
    m = cfg.model
    if m.task not in TASKS:
        raise ValueError(f"model.task must be 'semantic' for model.meta_architecture 'knet_semantic', got {m.task!r}")
    if m.decode_head not in DECODE_HEADS:
        raise ValueError(f"model.decode_head must be one of {DECODE_HEADS}, got {m.decode_head!r}")
    if m.backbone not in BACKBONES:
        raise ValueError(f"model.backbone must be one of {BACKBONES} for the semantic K-Net, got {m.backbone!r}")
    if m.num_queries != m.num_classes:
        raise ValueError(f"model.num_queries ({m.num_queries}) must equal model.num_classes ({m.num_classes}): "
                         "the semantic K-Net has one kernel per class")
    if m.backbone.startswith("swin_") and (m.dilated or (m.dilated is None and m.decode_head != "upernet")):
        raise ValueError(f"model.backbone {m.backbone!r} has output stride 32 only: use model.decode_head 'upernet' "
                         f"(or model.dilated false), got decode_head {m.decode_head!r}")
    if m.backbone_drop_path and not m.backbone.startswith("swin_"):
        raise ValueError(f"model.backbone_drop_path: {m.backbone!r} has no stochastic depth (only swin_t / swin_l), "
                         f"got {m.backbone_drop_path}")
    width = m.head_channels or (256 if m.decode_head == "upernet" else 512)
    if m.updator_dim <= 0 or width % m.updator_dim:
        raise ValueError(f"model.updator_dim ({m.updator_dim}) must divide the decode head's width ({width})")


def build_optimizer(model, cfg: Any):
    """AdamW at ``solver.base_lr`` with weight decay on every parameter except those whose name
    contains one of ``model.no_decay_keys`` (the ResNet configs have none; the Swin configs:
    ``absolute_pos_embed``, ``relative_position_bias_table``, ``norm``, mmcv substring rule);
    ``backbone.*`` at ``solver.backbone_lr_multiplier``."""
    import torch

    from kmax_deeplab.solver import backbone_rules, build_param_groups

    s = cfg.solver
    groups = build_param_groups(model, base_lr=s.base_lr, weight_decay=s.weight_decay,
                                lr_rules=backbone_rules(s.backbone_lr_multiplier),
                                decay_rule=no_decay_rule(tuple(cfg.model.no_decay_keys)))
    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=s.base_lr, betas=tuple(s.betas), eps=s.eps, weight_decay=s.weight_decay)


def no_decay_rule(keys: Sequence[str]):
    """``decay_rule`` for :func:`~kmax_deeplab.solver.build_param_groups`: False (no weight decay)
    when the full parameter name contains one of ``keys`` (mmcv ``custom_keys`` ``decay_mult=0``)."""
    def decays(module_name: str, module, param_name: str) -> bool:
        full = f"{module_name}.{param_name}" if module_name else param_name
        return not any(k in full for k in keys)
    return decays




def import_mmseg(src, model, cfg: Any, strict: bool = True):
    """Original semantic K-Net ``.pth`` (``{"state_dict", "meta"}``, mmseg names) -> our state dict
    (``checkpoints/mmseg.py``)."""
    from kmax_deeplab.checkpoints.mmseg import load_mmseg_checkpoint

    return load_mmseg_checkpoint(src, model, strict=strict)


#: The keyword arguments of the semantic K-Net's ``Family`` row.
KNET_SEMANTIC = dict(
    name="knet_semantic",
    description="K-Net semantic (iterative kernel head on FCN / PSPNet / DeepLabv3 / UPerNet), semantic",
    sections={"model": KNetSemanticModelConfig, "loss": KNetSemanticLossConfig,
              "postprocess": KNetSemanticPostProcessConfig},
    build_model=build_model,
    build_criterion=build_criterion,
    postprocess=postprocess,
    input_geometry=input_geometry,
    build_optimizer=build_optimizer,
    importers={"mmseg": import_mmseg, "imagenet": import_imagenet_backbone},
    check_config=check_config,
    inference_keys=("sem_seg",),
    tasks=TASKS,
    full_resolution_targets=True,
)
