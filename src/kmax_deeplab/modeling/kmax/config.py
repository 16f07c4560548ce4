"""kMaX-DeepLab's config sections (``model``, ``loss``, ``postprocess``), spec ``kmax_deeplab.md``.

Plain dataclasses with no imports from ``kmax_deeplab.config``: the config schema finds them
through the family table (``modeling/families.py``, key ``"kmax"``) and parses the YAML
``model:``, ``loss:`` and ``postprocess:`` sections into them. :class:`KMaXModelConfig`
extends the shared :class:`~kmax_deeplab.modeling.sections.ModelConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kmax_deeplab.modeling.sections import ModelConfig


@dataclass
class KMaXModelConfig(ModelConfig):
    """kMaX-DeepLab architecture (spec §1): the shared :class:`ModelConfig` fields plus these.

    Attributes:
        decoder_filters: base width f of each pixel-decoder stage (strides 32, 16, 8, 4).
        decoder_num_blocks: blocks per pixel-decoder stage.
        decoder_block_types: ``"axial"`` or ``"bottleneck"`` per stage.
        use_stem_skip: add the fifth decoder stage on the stem features (Cityscapes).
        transformer_layers: kMaX layers reading strides 32, 16, 8.
        hidden_dim: query width (256).
        key_dim / value_dim / ffn_dim / num_heads: transformer sizes (128/256/2048/8).
        pixel_feature_dim: width of the L2-normalised pixel feature (128).
        drop_path: decoder drop-path rate (k-means, attention, FFN branches).
        aux_semantic: ``"decoder"`` (COCO/ADE20K), ``"head"`` (Cityscapes) or ``"none"``.
        reference: ``"bytedance"`` (default) or ``"deeplab2"``: which reference's network
            (and, with ``postprocess.variant="auto"``, post-processing) to build where the two
            differ (``modeling/kmax/model.py`` ``reference_behaviour``; ``docs/parity.md``).
    """

    decoder_filters: tuple[int, ...] = (512, 256, 128, 64)
    decoder_num_blocks: tuple[int, ...] = (1, 5, 1, 1)
    decoder_block_types: tuple[str, ...] = ("axial", "axial", "bottleneck", "bottleneck")
    use_stem_skip: bool = False
    transformer_layers: tuple[int, ...] = (2, 2, 2)
    hidden_dim: int = 256
    key_dim: int = 128
    value_dim: int = 256
    ffn_dim: int = 2048
    num_heads: int = 8
    pixel_feature_dim: int = 128
    drop_path: float = 0.2
    aux_semantic: str = "decoder"
    reference: str = "bytedance"


@dataclass
class KMaXPostProcessConfig:
    """Mask-wise merging thresholds (spec §3)."""

    # "auto": the variant of model.reference (bytedance, or deeplab2: >=, area limits,
    # crop-resolution merging); "bytedance" / "deeplab2" force one.
    variant: str = "auto"
    thing_threshold: float = 0.7
    stuff_threshold: float = 0.5
    overlap_threshold: float = 0.8
    pixel_confidence_threshold: float = 0.4
    class_weight: float = 1.0
    mask_weight: float = 1.0
    thing_area_limit: int = 400
    stuff_area_limit: int = 6400


@dataclass
class KMaXLossConfig:
    """Loss weights and sampling settings (spec §2)."""

    class_weight: float = 3.0
    dice_weight: float = 3.0
    mask_id_weight: float = 0.3
    instance_discrimination_weight: float = 1.0
    semantic_weight: float = 1.0
    focal_alpha: float = 0.75
    instance_discrimination_temperature: float = 0.3
    instance_sample_k: int = 4096
    instance_sample_temperature: float = 1.5
    semantic_sample_k: int = 4096  # 0 = all pixels (Cityscapes)
    semantic_sample_temperature: float = 2.0
    share_final_matching: bool = True
    mask_void_pixels: bool = True  # BD MASKING_VOID_PIXEL: zero query probs on void in matching/dice


__all__ = ["KMaXLossConfig", "KMaXModelConfig", "KMaXPostProcessConfig"]
