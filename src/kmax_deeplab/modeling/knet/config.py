"""K-Net's config sections (``model``, ``loss``, ``postprocess``; knet.md §2-§8).

Plain dataclasses found through the family table (``modeling/families.py``, key ``"knet"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kmax_deeplab.modeling.sections import ModelConfig

TASKS = ("panoptic", "instance")


@dataclass
class KNetModelConfig(ModelConfig):
    """K-Net architecture: the shared :class:`ModelConfig` fields plus these.

    Shared fields as K-Net reads them: ``backbone`` ``resnet50`` / ``resnet101`` (mmdet
    "pytorch" style, ImageNet mean/std), ``swin_t`` / ``swin_l`` (Swin, window 7) or
    ``resnet_tiny``; ``backbone_drop_path`` Swin's stochastic depth (Swin-L 0.2); ``num_classes`` C (panoptic COCO
    133, instance 80); ``num_queries`` the thing kernels (100); ``image_size`` the test
    scale ``(short, long)`` = (800, 1333) images are resized to, keeping the aspect ratio;
    ``norm`` the backbone's batch norm.

    Attributes:
        task: ``"panoptic"`` (thing + stuff kernels) or ``"instance"`` (things only).
        num_thing_classes: T (80); classes T..C-1 are stuff.
        num_stages: kernel update stages (3).
        hidden_dim / num_heads / ffn_dim: kernel width, attention heads, FFN width (256/8/2048).
        num_groups: GroupNorm groups of the localisation FPN and kernel head (32).
        frozen_stages / norm_eval: mmdet backbone freezing (ResNet 1: stem + res2; BN statistics frozen;
            Swin -1: nothing frozen, as the original Swin-L config).
        train_short: training short side drawn uniformly from this range, long side at most
            ``image_size[1]`` (1x: (800, 800); ms-3x: (640, 800)).
        dcn: ``"none"``, ``"DCN"`` (mmcv deformable conv v1: K-Net's R-101-DCN configs,
            ``dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False)``) or ``"DCNv2"``
            (modulated): the backbone's 3×3 convs in the stages of ``stage_with_dcn``.
        stage_with_dcn: res2..res5 flags for ``dcn`` (c3-c5: False, True, True, True).
    """

    meta_architecture: str = "knet"
    num_queries: int = 100
    image_size: tuple[int, int] = (800, 1333)
    task: str = "panoptic"
    num_thing_classes: int = 80
    num_stages: int = 3
    hidden_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 2048
    num_groups: int = 32
    frozen_stages: int = 1
    norm_eval: bool = True
    train_short: tuple[int, int] = (800, 800)
    dcn: str = "none"
    stage_with_dcn: tuple[bool, bool, bool, bool] = (False, True, True, True)


@dataclass
class KNetLossConfig:
    """Loss weights (knet.md §6): focal class 2, mask BCE 1, dice 4, rank 0.1 (panoptic),
    semantic focal 1 on the kernel head's map; focal alpha 0.25, gamma 2."""

    class_weight: float = 2.0
    mask_weight: float = 1.0
    dice_weight: float = 4.0
    rank_weight: float = 0.1
    semantic_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass
class KNetPostProcessConfig:
    """Inference thresholds (knet.md §7): panoptic thing score 0.3 and overlap 0.6, mask 0.5;
    instance: the best ``max_per_image`` (kernel, class) pairs."""

    instance_score_threshold: float = 0.3
    overlap_threshold: float = 0.6
    mask_threshold: float = 0.5
    max_per_image: int = 100
