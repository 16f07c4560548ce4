"""MaX-DeepLab's config sections (``model``, ``loss``, ``postprocess``), spec ``max_deeplab.md``.

Plain dataclasses: the config schema finds them through the family table
(``modeling/families.py``, key ``"max_deeplab"``). Defaults are deeplab2's MaX-DeepLab-S COCO
641 configuration (``configs/coco/max_deeplab/max_deeplab_s_os16_res641_*.textproto``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kmax_deeplab.modeling.sections import ModelConfig

#: ``model.variant`` -> the backbone name it implies.
VARIANT_BACKBONES = {"s": "axial_resnet50", "l": "wide_resnet41"}


@dataclass
class MaXModelConfig(ModelConfig):
    """MaX-DeepLab architecture: the shared :class:`ModelConfig` fields plus these.

    Attributes:
        variant: ``"s"`` (MaX-DeepLab-S: Axial-ResNet-50, 61.9 M parameters without the
            semantic branch) or ``"l"`` (MaX-DeepLab-L: Wide-ResNet-41 with stacked decoders).
        drop_path_keep_prob: keep probability at the last stage; linear schedule over strides (0.8).
        aux_semantic: ``"decoder"`` (the training-only semantic branch) or ``"none"``.
        width_multiplier / stem_width_multiplier / num_blocks / memory_channels /
        transformer_expansion / ffn_dim / head_dim / pixel_feature_dim: size knobs for small
            models (tests, the synthetic preset); 0 / () keep the variant's deeplab2 value
            (S: (3, 4, 6, 3), memory 256, expansion 1; L: (3, 6, 3, 3), 512, 2; FFN 2048,
            heads 256 wide, pixel feature 128).

    ``backbone`` must be the variant's (``axial_resnet50`` / ``wide_resnet41``); ``image_size``
    is the fixed canvas (641 or 1025; its stride-16 map must fit the 129-long axial attention).
    """

    meta_architecture: str = "max_deeplab"
    backbone: str = "axial_resnet50"
    image_size: tuple[int, int] = (641, 641)
    variant: str = "s"
    drop_path_keep_prob: float = 0.8
    aux_semantic: str = "decoder"
    width_multiplier: float = 1.0
    stem_width_multiplier: float = 1.0
    num_blocks: tuple[int, ...] = ()
    memory_channels: int = 0
    transformer_expansion: float = 0.0
    ffn_dim: int = 2048
    head_dim: int = 256
    pixel_feature_dim: int = 128


@dataclass
class MaXLossConfig:
    """Loss weights (spec §3; λ PQ 3.0 on both its terms, mask-ID CE 0.3, instance discrimination 1.0,
    semantic 1.0), the class term's α and the instance-discrimination temperature."""

    class_weight: float = 3.0
    dice_weight: float = 3.0
    mask_id_weight: float = 0.3
    instance_discrimination_weight: float = 1.0
    semantic_weight: float = 1.0
    focal_alpha: float = 0.75
    instance_discrimination_temperature: float = 0.3


@dataclass
class MaXPostProcessConfig:
    """"pixelwise" post-processing (spec §4): slot confidence 0.7, pixel confidence 0.4, area
    limits at canvas resolution (641: thing 100 / stuff 1600; 1025: 256 / 4096)."""

    class_threshold: float = 0.7
    pixel_confidence_threshold: float = 0.4
    thing_area_limit: int = 100
    stuff_area_limit: int = 1600


__all__ = ["MaXLossConfig", "MaXModelConfig", "MaXPostProcessConfig", "VARIANT_BACKBONES"]
