"""Config presets: a plain dict from name to a function returning a fresh :class:`Config`.

Numbers follow spec ``kmax_deeplab.md`` §1 (architecture), §3 (post-processing table)
and §4 (training recipes; bytedance trains with AMP fp16, hence ``solver.amp="fp16"``).
Nothing registers itself at import time; the table below is the whole list, printed by
``kmax info``.

Every ``*_deeplab2`` preset builds the network deeplab2 (TF) trained, for its checkpoints:
``model.reference="deeplab2"`` (the behaviour switches of ``docs/parity.md``: atrous
pixel-decoder bottlenecks, activated aux-semantic inputs, always-aligned resizes, the
deeplab2 post-processing with its area limits) and, for R50, the deeplab2-layout backbone.
"""

from __future__ import annotations

import dataclasses

from typing import Callable

from kmax_deeplab.modeling.max_deeplab.config import MaXLossConfig, MaXModelConfig, MaXPostProcessConfig
from kmax_deeplab.config.schema import (
    Config,
    DataConfig,
    KMaXLossConfig,
    KMaXModelConfig,
    KMaXPostProcessConfig,
    SolverConfig,
)

# ConvNeXt stochastic-depth rates per dataset (spec §4 table, "ConvNeXt drop-path").
_CONVNEXT_DROP_PATH = {
    "coco": {"tiny": 0.3, "small": 0.4, "base": 0.5, "large": 0.6},
    "cityscapes": {"tiny": 0.2, "small": 0.3, "base": 0.4, "large": 0.6},
    # The spec gives only L (0.7) for ADE20K; T/S/B fall back to the COCO rates.
    "ade20k": {"tiny": 0.3, "small": 0.4, "base": 0.5, "large": 0.7},
}


def _deeplab2(factory: Callable[[], Config]) -> Callable[[], Config]:
    """The preset of ``factory`` with deeplab2's network and post-processing."""

    def build() -> Config:
        cfg = factory()
        cfg.model.reference = "deeplab2"
        cfg.postprocess.variant = "deeplab2"
        return cfg

    return build


def _coco(backbone: str = "resnet50", drop: float = 0.0) -> Config:
    return Config(
        name=f"coco/kmax_{backbone}",
        model=KMaXModelConfig(backbone=backbone, backbone_drop_path=drop, num_classes=133,
                          num_queries=128, image_size=(1281, 1281), aux_semantic="decoder",
                          drop_path=0.2),
        data=DataConfig(dataset="coco", crop_size=(1281, 1281), min_scale=0.2, max_scale=2.0),
        loss=KMaXLossConfig(instance_sample_k=4096, instance_sample_temperature=1.5,
                        semantic_sample_k=4096, semantic_sample_temperature=2.0),
        solver=SolverConfig(batch_size=64, max_iters=150_000, base_lr=5e-4, amp="fp16"),
        postprocess=KMaXPostProcessConfig(thing_threshold=0.7, stuff_threshold=0.5,
                                      overlap_threshold=0.8, class_weight=1.0, mask_weight=1.0,
                                      thing_area_limit=400, stuff_area_limit=6400),
    )


def _cityscapes(backbone: str = "resnet50", drop: float = 0.0) -> Config:
    return Config(
        name=f"cityscapes/kmax_{backbone}",
        model=KMaXModelConfig(backbone=backbone, backbone_drop_path=drop, num_classes=19,
                          num_queries=256, image_size=(1025, 2049), aux_semantic="head",
                          use_stem_skip=True, drop_path=0.2),
        data=DataConfig(dataset="cityscapes", root="datasets/cityscapes",
                        train_image_dir="leftImg8bit/train",
                        train_json="gtFine/cityscapes_panoptic_train_trainId.json",
                        train_panoptic_dir="gtFine/cityscapes_panoptic_train_trainId",
                        val_image_dir="leftImg8bit/val",
                        val_json="gtFine/cityscapes_panoptic_val_trainId.json",
                        val_panoptic_dir="gtFine/cityscapes_panoptic_val_trainId",
                        crop_size=(1025, 2049), min_scale=0.5, max_scale=2.0),
        loss=KMaXLossConfig(instance_sample_k=4096, instance_sample_temperature=0.6,
                        semantic_sample_k=0),
        solver=SolverConfig(batch_size=32, max_iters=60_000, base_lr=3e-4, amp="fp16"),
        postprocess=KMaXPostProcessConfig(thing_threshold=0.5, stuff_threshold=0.3,
                                      overlap_threshold=0.9, class_weight=1.0, mask_weight=0.0,
                                      thing_area_limit=256, stuff_area_limit=2048),
    )


def _ade20k(backbone: str = "resnet50", drop: float = 0.0, size: int = 641) -> Config:
    return Config(
        name=f"ade20k/kmax_{backbone}_{size}",
        model=KMaXModelConfig(backbone=backbone, backbone_drop_path=drop, num_classes=150,
                          num_queries=128, image_size=(size, size), aux_semantic="decoder",
                          drop_path=0.0),
        data=DataConfig(dataset="ade20k", root="datasets/ADEChallengeData2016",
                        train_image_dir="images/training",
                        train_json="ade20k_panoptic_train.json",
                        train_panoptic_dir="ade20k_panoptic_train",
                        val_image_dir="images/validation",
                        val_json="ade20k_panoptic_val.json",
                        val_panoptic_dir="ade20k_panoptic_val",
                        crop_size=(size, size), min_scale=0.5, max_scale=2.0),
        loss=KMaXLossConfig(instance_sample_k=1024 if size == 641 else 4096,
                        instance_sample_temperature=1.5,
                        semantic_sample_k=4096, semantic_sample_temperature=2.0),
        solver=SolverConfig(batch_size=64, max_iters=100_000, base_lr=5e-4, amp="fp16"),
        postprocess=KMaXPostProcessConfig(thing_threshold=0.4, stuff_threshold=0.4,
                                      overlap_threshold=0.8, class_weight=1.0, mask_weight=1.0,
                                      thing_area_limit=0, stuff_area_limit=0),
    )


def _tiny() -> Config:
    """A small kMaX for tests and ``kmax demo``: synthetic data, 129x129 canvas, CPU-trainable."""
    return Config(
        name="synthetic/kmax_tiny",
        model=KMaXModelConfig(backbone="resnet_tiny", num_classes=7, num_queries=16,
                          image_size=(129, 129), decoder_filters=(64, 32, 16, 16),
                          decoder_num_blocks=(1, 1, 1, 1), transformer_layers=(1, 1, 1),
                          hidden_dim=64, key_dim=32, value_dim=64, ffn_dim=128, num_heads=4,
                          pixel_feature_dim=32, drop_path=0.0, aux_semantic="decoder"),
        data=DataConfig(dataset="synthetic", root="", train_image_dir="train/images",
                        train_json="train/panoptic.json", train_panoptic_dir="train/panoptic",
                        val_image_dir="val/images", val_json="val/panoptic.json",
                        val_panoptic_dir="val/panoptic", crop_size=(129, 129),
                        min_scale=0.5, max_scale=1.5, min_valid_pixels=64, num_workers=0,
                        # Off for the short CPU demo schedule: it underfits rather than overfits,
                        # object colours are already random, and half-scale pasted things on a
                        # 129 canvas are mostly below the stride-4 target resolution.
                        color_jitter=False, copy_paste=False),
        loss=KMaXLossConfig(instance_sample_k=512, instance_sample_temperature=1.5,
                        semantic_sample_k=512, semantic_sample_temperature=2.0),
        solver=SolverConfig(batch_size=8, max_iters=1500, base_lr=3e-3, warmup_iters=50,
                            checkpoint_period=200, eval_period=0, log_period=10,
                            backbone_lr_multiplier=1.0, output_dir="runs/kmax_tiny"),
        postprocess=KMaXPostProcessConfig(thing_threshold=0.5, stuff_threshold=0.4,
                                      overlap_threshold=0.8, thing_area_limit=0,
                                      stuff_area_limit=0),
    )


def _max_coco(variant: str, size: int) -> Config:
    """MaX-DeepLab COCO (spec ``max_deeplab.md`` §5; deeplab2 ``configs/coco/max_deeplab``).

    Adam (eps 1e-7, no weight decay), LR 1e-3 (L: 3e-4), 5k linear warmup from 0 then poly 0.9,
    0.1x LR on the ImageNet-pretrained encoder part (deeplab2's name rule), batch 64, 100k steps
    (the 100k configs; 200k / 400k: ``solver.max_iters``), random scale 0.5-1.5 and crop at the
    canvas, flip; L adds deeplab2's AutoAugment ``simple_classification_policy`` and the
    small-instance semantic weight 3 (thing segments under 4096 px). Not in the deeplab2 recipe
    and therefore off: colour jitter, copy-paste. Area limits scale with the canvas (§4).
    """
    small = size == 641
    return Config(
        name=f"coco/max_deeplab_{variant}_{size}",
        model=MaXModelConfig(variant=variant, backbone="axial_resnet50" if variant == "s" else "wide_resnet41",
                             num_classes=133, num_queries=128, image_size=(size, size), drop_path_keep_prob=0.8,
                             aux_semantic="decoder"),
        data=DataConfig(dataset="coco", crop_size=(size, size), min_scale=0.5, max_scale=1.5, scale_step=0.1,
                        color_jitter=False, copy_paste=False,
                        autoaugment="" if variant == "s" else "simple_classification_policy",
                        small_instance_weight=1.0 if variant == "s" else 3.0, small_instance_threshold=4096),
        loss=MaXLossConfig(),
        solver=SolverConfig(batch_size=64, max_iters=100_000, base_lr=1e-3 if variant == "s" else 3e-4,
                            optimizer="adam", eps=1e-7, weight_decay=0.0, warmup_iters=5000, warmup_factor=0.0,
                            poly_power=0.9, backbone_lr_multiplier=0.1),
        postprocess=MaXPostProcessConfig(class_threshold=0.7, pixel_confidence_threshold=0.4,
                                         thing_area_limit=100 if small else 256,
                                         stuff_area_limit=1600 if small else 4096),
    )


def _max_tiny() -> Config:
    """A small MaX-DeepLab-S for tests: synthetic data, 129x129 canvas, CPU-trainable (~0.3 M parameters)."""
    return Config(
        name="synthetic/max_deeplab_tiny",
        model=MaXModelConfig(variant="s", backbone="axial_resnet50", num_classes=7, num_queries=16,
                             image_size=(129, 129), drop_path_keep_prob=1.0, aux_semantic="decoder",
                             width_multiplier=0.125, stem_width_multiplier=0.25, num_blocks=(1, 1, 1, 1),
                             memory_channels=64, transformer_expansion=0.25, ffn_dim=128, head_dim=64,
                             pixel_feature_dim=32),
        data=DataConfig(dataset="synthetic", root="", train_image_dir="train/images",
                        train_json="train/panoptic.json", train_panoptic_dir="train/panoptic",
                        val_image_dir="val/images", val_json="val/panoptic.json",
                        val_panoptic_dir="val/panoptic", crop_size=(129, 129),
                        min_scale=0.5, max_scale=1.5, min_valid_pixels=64, num_workers=0,
                        color_jitter=False, copy_paste=False),
        loss=MaXLossConfig(),
        solver=SolverConfig(batch_size=8, max_iters=1500, base_lr=3e-3, optimizer="adam", eps=1e-7,
                            weight_decay=0.0, warmup_iters=50, warmup_factor=0.0, checkpoint_period=200,
                            eval_period=0, log_period=10, backbone_lr_multiplier=1.0,
                            output_dir="runs/max_deeplab_tiny"),
        postprocess=MaXPostProcessConfig(class_threshold=0.5, pixel_confidence_threshold=0.4,
                                         thing_area_limit=0, stuff_area_limit=0),
    )


# K-Net (knet.md §8): COCO train2017 has 118,287 images; 16 per step -> 7,393 steps per epoch.
_KNET_EPOCH = 7393


def _knet(backbone: str, schedule: str, task: str, dcn: str = "none") -> Config:
    """K-Net on COCO: AdamW 1e-4, wd 0.05, backbone x0.25, clip 1, 1000-step linear warmup
    from 0.001x, step decay x0.1 (1x: 12 epochs, steps at 8 and 11; ms-3x: 36 epochs, steps
    at 27 and 33), batch 16.

    Training sizes come from the family's geometry (``model.train_short``, long side <= 1333,
    flips); ``data.crop_size`` and the scale jitter are kMaX's and unused here. ``dcn="DCN"``:
    the R-101-DCN configs (``knet_s3_r101_dcn-c3-c5_*``: mmcv's deformable conv v1 in res3..res5).
    """
    from kmax_deeplab.modeling.knet.config import KNetLossConfig, KNetModelConfig, KNetPostProcessConfig

    epochs, steps = (12, (8, 11)) if schedule == "1x" else (36, (27, 33))
    panoptic = task == "panoptic"
    short = ("r50" if backbone == "resnet50" else "r101") + ("" if dcn == "none" else "_dcn")
    return Config(
        name=f"coco/knet_{short}_fpn_{schedule}" + ("" if panoptic else "_instance"),
        model=KNetModelConfig(backbone=backbone, task=task, num_classes=133 if panoptic else 80,
                              num_queries=100, image_size=(800, 1333),
                              train_short=(800, 800) if schedule == "1x" else (640, 800), dcn=dcn),
        data=DataConfig(dataset="coco", crop_size=(800, 1333),
                        min_scale=1.0 if schedule == "1x" else 0.8, max_scale=1.0,
                        color_jitter=False, copy_paste=False),
        loss=KNetLossConfig(rank_weight=0.1),
        solver=SolverConfig(batch_size=16, max_iters=epochs * _KNET_EPOCH, base_lr=1e-4, weight_decay=0.05,
                            backbone_lr_multiplier=0.25, warmup_iters=1000, warmup_factor=0.001,
                            optimizer="adamw", lr_schedule="warmup_step",
                            lr_steps=tuple(e * _KNET_EPOCH for e in steps), lr_gamma=0.1,
                            clip_grad_norm=1.0, output_dir="runs/knet"),
        postprocess=KNetPostProcessConfig(instance_score_threshold=0.3, overlap_threshold=0.6),
    )


# The Swin-L config trains on 16 GPUs x 2 images: 32 per step -> 3,697 steps per epoch.
_KNET_SWIN_EPOCH = 3697


def _knet_swin_l(task: str) -> Config:
    """K-Net Swin-L ms-3x (``configs/det/knet/knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py``): the ms-3x
    recipe of :func:`_knet` with mmdet's Swin-L (window 7, drop path 0.2, nothing frozen; ImageNet-22k
    init ``swin_large_patch4_window7_224_22k.pth``), FPN on 192/384/768/1536 channels, batch 32 (16 x 2),
    so 36 epochs are 36 x 3,697 steps with the decay at epochs 27 and 33; LR and backbone 0.25x as R-50.

    The original ships the panoptic config only; ``task="instance"`` is ours (80 thing classes, the
    instance R-50 ms-3x head on this backbone).
    """
    cfg = _knet("resnet50", "ms3x", task)
    cfg.name = "coco/knet_swin_l_fpn_ms3x" + ("" if task == "panoptic" else "_instance")
    cfg.model.backbone = "swin_l"
    cfg.model.backbone_drop_path = 0.2
    cfg.model.frozen_stages = -1
    cfg.model.norm_eval = False
    s = cfg.solver
    s.batch_size = 32
    s.max_iters = 36 * _KNET_SWIN_EPOCH
    s.lr_steps = (27 * _KNET_SWIN_EPOCH, 33 * _KNET_SWIN_EPOCH)
    return cfg


def _knet_tiny(task: str = "panoptic") -> Config:
    """A small K-Net for tests: synthetic data (4 thing + 3 stuff classes), 128x128, CPU-trainable."""
    from kmax_deeplab.modeling.knet.config import KNetLossConfig, KNetModelConfig, KNetPostProcessConfig

    panoptic = task == "panoptic"
    return Config(
        name="synthetic/knet_tiny" + ("" if panoptic else "_instance"),
        model=KNetModelConfig(backbone="resnet_tiny", task=task, num_classes=7 if panoptic else 4,
                              num_thing_classes=4, num_queries=8, image_size=(128, 128), num_stages=2,
                              train_short=(96, 128),
                              hidden_dim=32, num_heads=4, ffn_dim=64, num_groups=4, frozen_stages=-1,
                              norm_eval=False),
        data=DataConfig(dataset="synthetic", root="", train_image_dir="train/images",
                        train_json="train/panoptic.json", train_panoptic_dir="train/panoptic",
                        val_image_dir="val/images", val_json="val/panoptic.json",
                        val_panoptic_dir="val/panoptic", crop_size=(128, 128), min_scale=0.8,
                        max_scale=1.2, min_valid_pixels=64, num_workers=0, color_jitter=False,
                        copy_paste=False),
        loss=KNetLossConfig(),
        solver=SolverConfig(batch_size=4, max_iters=300, base_lr=1e-3, weight_decay=0.05,
                            backbone_lr_multiplier=1.0, warmup_iters=20, lr_schedule="warmup_step",
                            lr_steps=(250,), clip_grad_norm=1.0, checkpoint_period=100, eval_period=0,
                            log_period=10, output_dir="runs/knet_tiny"),
        postprocess=KNetPostProcessConfig(),
    )


def _knet_semantic(decode_head: str) -> Config:
    """The semantic K-Net R-50 on ADE20K (``configs/seg/knet/knet_s3_{head}_r50-d8_80k_adamw_ade20k.py``):
    AdamW 1e-4, weight decay 5e-4 on every parameter, gradient clipping at L2 norm 1, linear
    warmup over 1000 steps from 0.001x, step decay x0.1 at 60k and 72k, 80k steps, batch 16
    (8 x 2); crops 512x512 from a 0.5-2.0 ratio resize of 2048x512; test at 2048x512 keep-ratio,
    whole image. ResNetV1c-50 at output stride 8 (32 for UPerNet); SyncBN as the configs."""
    from kmax_deeplab.modeling.knet_semantic.config import (
        KNetSemanticLossConfig,
        KNetSemanticModelConfig,
        KNetSemanticPostProcessConfig,
    )

    name = f"ade20k/knet_r50_d8_{decode_head}_512"
    return Config(
        name=name,
        model=KNetSemanticModelConfig(backbone="resnet50_v1c", decode_head=decode_head, num_classes=150,
                                      num_queries=150, image_size=(512, 2048), norm="SyncBN"),
        data=DataConfig(dataset="ade20k", root="datasets/ADEChallengeData2016", train_image_dir="images/training",
                        val_image_dir="images/validation", crop_size=(512, 512), min_scale=0.5, max_scale=2.0,
                        color_jitter=True, copy_paste=False),
        loss=KNetSemanticLossConfig(stage_weight=1.0, aux_weight=0.4, ignore_label=255, avg_non_ignore=False),
        solver=SolverConfig(batch_size=16, max_iters=80_000, base_lr=1e-4, weight_decay=5e-4,
                            backbone_lr_multiplier=1.0, warmup_iters=1000, warmup_factor=0.001,
                            optimizer="adamw", lr_schedule="warmup_step", lr_steps=(60_000, 72_000),
                            lr_gamma=0.1, clip_grad_norm=1.0, checkpoint_period=8000, eval_period=8000,
                            output_dir="runs/knet_semantic"),
        postprocess=KNetSemanticPostProcessConfig(mode="whole"),
    )


def _knet_semantic_tiny() -> Config:
    """A small semantic K-Net for tests: the synthetic dataset's panoptic PNGs read as semantic
    labels (7 classes), 128x128 images, 96x96 crops, K-Net + FCN on a tiny ResNet (output stride
    8; 32-d kernels updated as two 16-d halves, as the R-50 FCN's 512-d as 256-d), CPU-trainable."""
    from kmax_deeplab.modeling.knet_semantic.config import (
        KNetSemanticLossConfig,
        KNetSemanticModelConfig,
        KNetSemanticPostProcessConfig,
    )

    return Config(
        name="synthetic/knet_semantic_tiny",
        model=KNetSemanticModelConfig(backbone="resnet_tiny", decode_head="fcn", num_classes=7, num_queries=7,
                                      image_size=(128, 128), head_channels=32, updator_dim=16, num_stages=3,
                                      num_heads=2, ffn_dim=64, aux_channels=16, norm="BN"),
        data=DataConfig(dataset="synthetic", root="", train_image_dir="train/images",
                        train_json="train/panoptic.json", train_panoptic_dir="train/panoptic",
                        val_image_dir="val/images", val_json="val/panoptic.json",
                        val_panoptic_dir="val/panoptic", crop_size=(96, 96), min_scale=0.75, max_scale=1.5,
                        num_workers=0, color_jitter=False, copy_paste=False),
        loss=KNetSemanticLossConfig(),
        solver=SolverConfig(batch_size=4, max_iters=300, base_lr=1e-3, weight_decay=5e-4, backbone_lr_multiplier=1.0,
                            warmup_iters=20, warmup_factor=0.001, optimizer="adamw", lr_schedule="warmup_step",
                            lr_steps=(250,), lr_gamma=0.1, clip_grad_norm=1.0, checkpoint_period=100,
                            eval_period=0, log_period=10, output_dir="runs/knet_semantic_tiny"),
        postprocess=KNetSemanticPostProcessConfig(mode="whole"),
    )


def _knet_semantic_swin(size: str, crop: int) -> Config:
    """The semantic K-Net + UPerNet on Swin
    (``configs/seg/knet/knet_s3_upernet_swin-{t,l}_80k_adamw[_640x640]_ade20k.py``):
    the UPerNet R-50 recipe of :func:`_knet_semantic` with Swin-T (drop path 0.3) or Swin-L (640²: drop path
    0.4, crops 640x640 from a 2048x640 ratio resize, test at 2048x640), AdamW lr 6e-5, betas (0.9, 0.999),
    weight decay 5e-4 except the Swin configs' ``paramwise_cfg`` keys (``absolute_pos_embed``,
    ``relative_position_bias_table``, ``norm``: no decay); ImageNet init from the official
    ``swin_tiny_patch4_window7_224.pth`` / ``swin_large_patch4_window7_224_22k.pth``
    (``kmax convert --from imagenet``)."""
    cfg = _knet_semantic("upernet")
    cfg.name = f"ade20k/knet_swin_{size}_upernet_{crop}"
    m = cfg.model
    m.backbone = f"swin_{size}"
    m.backbone_drop_path = 0.3 if size == "t" or crop == 512 else 0.4
    m.no_decay_keys = ("absolute_pos_embed", "relative_position_bias_table", "norm")
    m.image_size = (crop, 2048)
    cfg.data.crop_size = (crop, crop)
    cfg.solver.base_lr = 6e-5
    cfg.solver.betas = (0.9, 0.999)
    return cfg


def _named(factory: Callable[[], Config], name: str) -> Callable[[], Config]:
    def build() -> Config:
        cfg = factory()
        cfg.name = name
        return cfg

    return build


PRESETS: dict[str, Callable[[], Config]] = {
    "coco/kmax_r50": _named(lambda: _coco("resnet50"), "coco/kmax_r50"),
    "coco/kmax_r50_deeplab2": _named(_deeplab2(lambda: _coco("resnet50_deeplab2")), "coco/kmax_r50_deeplab2"),
    "cityscapes/kmax_r50": _named(lambda: _cityscapes("resnet50"), "cityscapes/kmax_r50"),
    "cityscapes/kmax_r50_deeplab2": _named(_deeplab2(lambda: _cityscapes("resnet50_deeplab2")),
                                           "cityscapes/kmax_r50_deeplab2"),
    "ade20k/kmax_r50_641_deeplab2": _named(_deeplab2(lambda: _ade20k("resnet50_deeplab2", size=641)),
                                           "ade20k/kmax_r50_641_deeplab2"),
    "ade20k/kmax_r50_1281_deeplab2": _named(_deeplab2(lambda: _ade20k("resnet50_deeplab2", size=1281)),
                                            "ade20k/kmax_r50_1281_deeplab2"),
    "ade20k/kmax_r50_641": _named(lambda: _ade20k("resnet50", size=641), "ade20k/kmax_r50_641"),
    "ade20k/kmax_r50_1281": _named(lambda: _ade20k("resnet50", size=1281), "ade20k/kmax_r50_1281"),
    "synthetic/kmax_tiny": _tiny,
    "coco/max_deeplab_s_641": lambda: _max_coco("s", 641),
    "coco/max_deeplab_s_1025": lambda: _max_coco("s", 1025),
    "coco/max_deeplab_l_1025": lambda: _max_coco("l", 1025),
    "synthetic/max_deeplab_tiny": _max_tiny,
}
for _task, _suffix in (("panoptic", ""), ("instance", "_instance")):
    PRESETS[f"synthetic/knet_tiny{_suffix}"] = (lambda t=_task: _knet_tiny(t))
    for _bb, _sched in (("resnet50", "1x"), ("resnet50", "ms3x"), ("resnet101", "ms3x")):
        _n = f"coco/knet_{'r50' if _bb == 'resnet50' else 'r101'}_fpn_{_sched}{_suffix}"
        PRESETS[_n] = (lambda bb=_bb, sc=_sched, t=_task: _knet(bb, sc, t))
    PRESETS[f"coco/knet_r101_dcn_fpn_ms3x{_suffix}"] = (lambda t=_task: _knet("resnet101", "ms3x", t, dcn="DCN"))
    PRESETS[f"coco/knet_swin_l_fpn_ms3x{_suffix}"] = (lambda t=_task: _knet_swin_l(t))
PRESETS["synthetic/knet_semantic_tiny"] = _knet_semantic_tiny
for _head in ("fcn", "pspnet", "deeplabv3", "upernet"):
    PRESETS[f"ade20k/knet_r50_d8_{_head}_512"] = (lambda h=_head: _knet_semantic(h))
# mmsegmentation's K-Net + UPerNet (the released checkpoint): the UPerNet head 512 channels wide.
PRESETS["ade20k/knet_r50_d8_upernet_512_mmseg"] = _named(
    lambda: dataclasses.replace(_knet_semantic("upernet"),
                                model=dataclasses.replace(_knet_semantic("upernet").model, head_channels=512)),
    "ade20k/knet_r50_d8_upernet_512_mmseg")


def _mmseg_width(factory: Callable[[], Config], name: str) -> Callable[[], Config]:
    """``factory``'s config with mmseg's 512-wide UPerNet (the released mmseg K-Net files)."""
    def build() -> Config:
        cfg = factory()
        cfg.name, cfg.model.head_channels = name, 512
        return cfg

    return build


for _size, _crop in (("t", 512), ("l", 512), ("l", 640)):
    _n = f"ade20k/knet_swin_{_size}_upernet_{_crop}_mmseg"
    PRESETS[_n] = _mmseg_width(lambda sz=_size, c=_crop: _knet_semantic_swin(sz, c), _n)
PRESETS["ade20k/knet_swin_t_upernet_512"] = lambda: _knet_semantic_swin("t", 512)
PRESETS["ade20k/knet_swin_l_upernet_512"] = lambda: _knet_semantic_swin("l", 512)
PRESETS["ade20k/knet_swin_l_upernet_640"] = lambda: _knet_semantic_swin("l", 640)
for _size in ("tiny", "small", "base", "large"):
    _bb = f"convnext_{_size}"
    _factories = {
        f"coco/kmax_{_bb}": (lambda bb=_bb, s=_size: _coco(bb, _CONVNEXT_DROP_PATH["coco"][s])),
        f"cityscapes/kmax_{_bb}": (lambda bb=_bb, s=_size: _cityscapes(bb, _CONVNEXT_DROP_PATH["cityscapes"][s])),
    }
    for _px in (641, 1281):
        _factories[f"ade20k/kmax_{_bb}_{_px}"] = (
            lambda bb=_bb, s=_size, px=_px: _ade20k(bb, _CONVNEXT_DROP_PATH["ade20k"][s], px))
    for _name, _factory in _factories.items():
        PRESETS[_name] = _named(_factory, _name)
        PRESETS[f"{_name}_deeplab2"] = _named(_deeplab2(_factory), f"{_name}_deeplab2")


def list_presets() -> list[str]:
    """Return the sorted preset names."""
    return sorted(PRESETS)


def get_preset(name: str) -> Config:
    """Return a fresh :class:`Config` for preset ``name``.

    Raises:
        KeyError: unknown preset; the message lists the valid names.
    """
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(list_presets())}") from None
