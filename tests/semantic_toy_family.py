"""A test-local semantic family row (``semantic_toy``) until feat/knetsem's semantic family is
on main: a ResNetV1c-style tiny backbone (deep stem, output stride 8 with dilations 1/1/2/4,
``contract_dilation``) and mmseg's FCN head (``modeling/semantic/heads.py``), following the
semantic contract (``model.task == "semantic"``; eval-mode ``forward(x)`` on ``[B, 3, H, W]``
RGB 0..255 returns ``{"sem_seg": logits [B, C, H, W]}`` at the input size, bilinear,
``align_corners=False``, as mmseg's ``encode_decode``). Tests add it with
``monkeypatch.setitem(FAMILIES, "semantic_toy", SEMANTIC_TOY)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kmax_deeplab.geometry import IMAGENET_MEAN, IMAGENET_STD, ResizePad
from kmax_deeplab.modeling import families
from kmax_deeplab.modeling.backbones.resnet import ResNet
from kmax_deeplab.modeling.semantic.heads import FCNHead
from kmax_deeplab.modeling.sections import ModelConfig

NAME = "semantic_toy"


@dataclass
class ToyModelConfig(ModelConfig):
    task: str = "semantic"
    channels: int = 16


@dataclass
class ToyLossConfig:
    ce_weight: float = 1.0


@dataclass
class ToyTestConfig:  # the SemanticTestConfig fields, as a family's postprocess section
    mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    img_scale: tuple[int, int] = (2048, 512)


class ToySemanticModel(nn.Module):
    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.backbone = ResNet((1, 1, 1, 1), stem_channels=16, bottleneck_channels=(8, 16, 32, 64),
                               bn_eps=1e-5, bn_momentum=0.1, deep_stem=True, strides=(1, 2, 1, 1),
                               dilations=(1, 1, 2, 4), contract_dilation=True)
        self.decode_head = FCNHead("res5", 256, channels, num_classes, num_convs=2, concat_input=True)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(-1, 1, 1), persistent=False)

    def forward(self, images):
        x = (images - self.pixel_mean) / self.pixel_std
        logits = self.decode_head(self.backbone(x))
        return {"sem_seg": F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)}


def _criterion(cfg):
    def criterion(outputs, targets):
        return {"loss_ce": cfg.loss.ce_weight * F.cross_entropy(outputs["sem_seg"], targets, ignore_index=255)}
    return criterion


def _no_panoptic(*args, **kwargs):
    raise ValueError("semantic_toy is a semantic model: use predict_semantic / kmax predict --task semantic")


def build(cfg) -> ToySemanticModel:
    torch.manual_seed(0)
    return ToySemanticModel(cfg.model.num_classes, cfg.model.channels)


SEMANTIC_TOY = families.Family(
    name=NAME, description="test-only semantic family (ResNetV1c-tiny + FCN)",
    sections={"model": ToyModelConfig, "loss": ToyLossConfig, "postprocess": ToyTestConfig},
    build_model=build, build_criterion=_criterion, postprocess=_no_panoptic,
    input_geometry=lambda cfg: ResizePad(short=512, long=2048),
    build_optimizer=lambda model, cfg: torch.optim.AdamW(model.parameters(), lr=cfg.solver.base_lr),
    build_scheduler=lambda opt, cfg: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
    inference_keys=("sem_seg",))
