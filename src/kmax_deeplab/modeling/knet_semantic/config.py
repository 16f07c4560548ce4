"""The semantic K-Net's config sections (``model``, ``loss``, ``postprocess``).

Plain dataclasses found through the family table (``modeling/families.py``, key
``"knet_semantic"``). Defaults are the ADE20K configs of the original code
(``configs/seg/knet/knet_s3_*_r50-d8_80k_adamw_ade20k.py``, ZwwWayne/K-Net @5e50ee5).
"""

from __future__ import annotations

from dataclasses import dataclass

from kmax_deeplab.modeling.sections import ModelConfig

#: ``model.task`` values of the family (the contract with ``engine/semantic_inference.py``).
TASKS = ("semantic",)
#: ``model.decode_head`` values: mmseg's FCN, PSPNet, DeepLabv3 (ASPP) and UPerNet heads.
DECODE_HEADS = ("fcn", "pspnet", "deeplabv3", "upernet")
#: ``model.backbone`` values: mmseg ``ResNetV1c`` (deep stem), Swin-T / Swin-L (window 7; the
#: configs' ``*swin*``) and a tiny ResNet for tests.
BACKBONES = ("resnet50_v1c", "resnet101_v1c", "swin_t", "swin_l", "resnet_tiny")


@dataclass
class KNetSemanticModelConfig(ModelConfig):
    """Semantic K-Net: a decode head whose ``conv_seg`` gives one kernel per class, refined by
    ``num_stages`` kernel update stages (mmseg ``IterativeDecodeHead``), plus mmseg's
    auxiliary FCN head on ``res4`` for training.

    Shared fields as this family reads them: ``backbone`` one of :data:`BACKBONES`;
    ``backbone_drop_path`` Swin's stochastic depth (Swin-T 0.3, Swin-L 512² 0.3, 640² 0.4);
    ``num_classes`` K (ADE20K 150); ``num_queries`` the kernels, which must equal K (one per
    class); ``image_size`` the test scale ``(short, long)`` = (512, 2048), images resized
    to fit it keeping the aspect ratio (mmseg ``Resize(img_scale=(2048, 512),
    keep_ratio=True)``); ``norm`` every batch norm (the configs' ``SyncBN``).

    Attributes:
        task: ``"semantic"`` (the only task of this family).
        decode_head: one of :data:`DECODE_HEADS`.
        dilated: backbone output stride 8 (dilations 1/1/2/4) or 32; None follows the
            configs: 8 for fcn / pspnet / deeplabv3, 32 for upernet (despite its "d8" name).
        head_channels: the decode head's ``channels`` = kernel width D; None: mmseg's (512,
            UPerNet 256).
        updator_dim: width U of the kernel updator (256); D/U pieces per kernel (FCN: two
            256-d halves of each 512-d kernel, knet.md §13).
        num_stages / num_heads / ffn_dim: update stages, attention heads, FFN width (3/8/2048).
        auxiliary_head: build the auxiliary FCN head (``res4`` -> ``aux_channels``); run in
            training only.
        aux_channels: its ``channels`` (256).
        dropout_ratio: ``Dropout2d`` before each ``conv_seg`` (0.1).
        align_corners: of every bilinear resize (False).
        no_decay_keys: parameters whose full name contains one of these get no weight decay
            (mmcv ``paramwise_cfg.custom_keys`` with ``decay_mult=0``, matched as substrings as
            mmcv does; the Swin configs: ``absolute_pos_embed``, ``relative_position_bias_table``,
            ``norm``; our names hold ``norm`` exactly where mmseg's do).
    """

    meta_architecture: str = "knet_semantic"
    backbone: str = "resnet50_v1c"
    num_classes: int = 150
    num_queries: int = 150
    image_size: tuple[int, int] = (512, 2048)
    task: str = "semantic"
    decode_head: str = "upernet"
    dilated: bool | None = None
    head_channels: int | None = None
    updator_dim: int = 256
    num_stages: int = 3
    num_heads: int = 8
    ffn_dim: int = 2048
    auxiliary_head: bool = True
    aux_channels: int = 256
    dropout_ratio: float = 0.1
    align_corners: bool = False
    no_decay_keys: tuple[str, ...] = ()


@dataclass
class KNetSemanticLossConfig:
    """Pixel cross-entropy on the decode head's logits and every stage's (weight 1 each) and
    on the auxiliary head's (0.4); ``ignore_label`` pixels excluded; ``avg_non_ignore``
    mmseg's averaging switch (False in the configs: mean over all pixels)."""

    stage_weight: float = 1.0
    aux_weight: float = 0.4
    ignore_label: int = 255
    avg_non_ignore: bool = False


@dataclass
class KNetSemanticPostProcessConfig:
    """Test mode (mmseg ``test_cfg``; the K-Net ADE20K configs: ``mode='whole'``), read by
    :meth:`kmax_deeplab.engine.semantic_inference.SemanticTestConfig.from_config` (same field
    names; the test scale is ``model.image_size``, ``align_corners`` the model's).

    Attributes:
        mode: ``"whole"`` (one forward of the resized image) or ``"slide"``.
        crop_size / stride: sliding-window crop and stride ``(h, w)``.
        flip: add flipped inputs; flip_direction: ``"horizontal"`` and/or ``"vertical"``.
        scales: test scale ratios of ``model.image_size`` (mmseg ``img_ratios``).
    """

    mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    flip: bool = False
    flip_direction: tuple[str, ...] = ("horizontal",)
    scales: tuple[float, ...] = (1.0,)
