"""K-Net (Zhang et al., NeurIPS 2021) for panoptic and instance segmentation (knet.md §1-§5).

backbone (ResNet "pytorch" style or Swin) -> FPN P2..P5 -> :class:`KernelInitHead` (localisation FPN,
initial kernels and masks at stride 8) -> ``num_stages`` × :class:`KernelUpdateHead`.

State-dict layout (ours; :mod:`kmax_deeplab.checkpoints.mmdet` maps it to and from the
original ``.pth`` keys of knet.md §10)::

    backbone.stem.conv1.*, backbone.res{2..5}.{b}.{conv1,conv2,conv3,shortcut}.*
    neck.{lateral_convs,output_convs}.{0..3}.{weight,bias}
    kernel_head.localization_fpn.levels.{L}.{j}.{conv.weight,norm.*}
    kernel_head.localization_fpn.{loc_out,sem_out}.{conv.weight,norm.*}
    kernel_head.{loc_conv,seg_conv}.{conv.weight,norm.*}
    kernel_head.init_kernels.weight, kernel_head.conv_seg.{weight,bias}
    stages.{i}.{feat_transform,updator.*,attention.*,attention_norm,ffn.{fc1,fc2},ffn_norm,
                cls_fcs.{0,1},fc_cls,mask_fcs.{0,1},fc_mask}.*
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.backbones.base import Backbone
from kmax_deeplab.modeling.knet.kernel_head import KernelInitHead
from kmax_deeplab.modeling.knet.kernel_update import KernelUpdateHead
from kmax_deeplab.modeling.knet.neck import FPN

__all__ = ["BACKBONES", "IMAGENET_MEAN", "SWIN_BACKBONES", "IMAGENET_STD", "KNet", "SIZE_DIVISOR", "TASKS", "build_knet"]

#: ImageNet RGB mean / std on 0..255 (mmdet ``img_norm_cfg``).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: The padded canvas is a multiple of this (mmdet ``Pad(size_divisor=32)``).
SIZE_DIVISOR = 32
TASKS = ("panoptic", "instance")
FPN_FEATURES = ("res2", "res3", "res4", "res5")
#: K-Net backbone name -> Swin size (:data:`~kmax_deeplab.modeling.backbones.swin.SWIN_SIZES`).
SWIN_BACKBONES = {"swin_t": "tiny", "swin_l": "large"}
BACKBONES = ("resnet50", "resnet101", *SWIN_BACKBONES, "resnet_tiny")


class KNet(nn.Module):
    """K-Net, composed from built modules.

    Input ``images [B, 3, H, W]`` float RGB in 0..255. The model normalises with the ImageNet
    mean/std, sets pixels outside ``image_sizes`` to 0 (the value mmdet pads a normalised
    image with) and pads bottom/right with 0 to a multiple of 32: canvas ``Hp × Wp``.

    Output dict (every mask at stride 4 of the canvas, ``h = Hp/4``):

    * ``pred_logits`` ``[B, N, C]`` last stage's class logits (per-class sigmoid, no void);
    * ``pred_masks`` ``[B, N, h, w]`` last stage's mask logits, bilinear ×2 from stride 8;
    * ``aux_outputs``: one ``{"pred_logits", "pred_masks"}`` per earlier stage, in order;
    * ``init_masks`` ``[B, N_thing, h, w]`` the kernel head's thing masks M0 (×2);
    * ``semantic_logits`` ``[B, C, h, w]`` the kernel head's semantic logits S (×2);
    * ``init_all_masks`` ``[B, N, h, w]`` M0 with the stuff channels of S (×2): the
      stage-0 assignment input;
    * ``canvas_size`` ``(Hp, Wp)``.

    N = ``num_kernels`` (+ ``num_stuff`` for panoptic).

    Args:
        backbone: :class:`Backbone` with ``res2..res5`` in ``feature_info``.
        neck: :class:`FPN` over those four maps.
        kernel_head: :class:`KernelInitHead`.
        stages: the :class:`KernelUpdateHead` stages (3).
        task: ``"panoptic"`` or ``"instance"``.
        num_thing_classes: classes the thing kernels score (COCO 80).
        pixel_mean, pixel_std: normalisation on 0..255.
    """

    def __init__(self, backbone: Backbone, neck: FPN, kernel_head: KernelInitHead,
                 stages: Sequence[KernelUpdateHead], *, task: str = "panoptic",
                 num_thing_classes: int = 80,
                 pixel_mean: Sequence[float] = IMAGENET_MEAN,
                 pixel_std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown K-Net task {task!r}; expected one of {TASKS}")
        self.task = task
        self.backbone = backbone
        self.neck = neck
        self.kernel_head = kernel_head
        self.stages = nn.ModuleList(stages)
        self.num_classes = kernel_head.num_classes
        self.num_thing_classes = num_thing_classes
        self.num_kernels = kernel_head.num_kernels
        self.num_stuff = kernel_head.num_stuff
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)

    def normalize(self, images: Tensor, image_sizes: Optional[Sequence[Sequence[int]]] = None) -> Tensor:
        """Normalised, zero-padded canvas ``[B, 3, Hp, Wp]`` (see the class docstring).

        Raises:
            ValueError: ``images`` is not ``[B, 3, H, W]`` float, or ``image_sizes`` has
                another length than B or a size larger than the batch.
        """
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"K-Net expects float images [B, 3, H, W] in 0..255, got "
                             f"{tuple(images.shape)} {images.dtype}")
        x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        h, w = x.shape[-2:]
        if image_sizes is not None:
            if len(image_sizes) != x.shape[0]:
                raise ValueError(f"{len(image_sizes)} image_sizes for a batch of {x.shape[0]}")
            valid = torch.zeros((x.shape[0], 1, h, w), dtype=torch.bool, device=x.device)
            for i, (vh, vw) in enumerate(image_sizes):
                if vh > h or vw > w:
                    raise ValueError(f"image_sizes[{i}] = {(vh, vw)} exceeds the batch size {(h, w)}")
                valid[i, :, :vh, :vw] = True
            x = x * valid
        ph, pw = -h % SIZE_DIVISOR, -w % SIZE_DIVISOR
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return x

    def forward(self, images: Tensor, image_sizes: Optional[Sequence[Sequence[int]]] = None) -> dict[str, Any]:
        """K-Net forward; see the class docstring for inputs and outputs."""
        x = self.normalize(images, image_sizes)
        feats = self.backbone(x)
        pyramid = self.neck([feats[name] for name in FPN_FEATURES])
        head = self.kernel_head(pyramid)
        kernels, masks = head.kernels, head.masks
        stage_outs = []
        for stage in self.stages:
            out = stage(head.x_feats, kernels, masks)
            kernels, masks = out.kernels, out.mask_logits
            stage_outs.append({"pred_logits": out.cls_logits, "pred_masks": _up2(out.mask_logits)})
        result: dict[str, Any] = dict(stage_outs[-1])
        result["aux_outputs"] = stage_outs[:-1]
        result["init_masks"] = _up2(head.thing_masks)
        result["semantic_logits"] = _up2(head.semantic_logits)
        result["init_all_masks"] = _up2(head.masks)
        result["canvas_size"] = tuple(x.shape[-2:])
        return result


def _up2(x: Tensor) -> Tensor:
    """Bilinear ×2 (align_corners False): stride 8 -> stride 4."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def build_knet(*, task: str = "panoptic", backbone: str = "resnet50", num_classes: Optional[int] = None,
               num_thing_classes: int = 80, num_kernels: int = 100, num_stages: int = 3,
               channels: int = 256, num_heads: int = 8, ffn_channels: int = 2048,
               num_groups: int = 32, frozen_stages: int = 1, norm_eval: bool = True,
               dcn: Optional[str] = None, stage_with_dcn: Sequence[bool] = (False, True, True, True),
               backbone_drop_path: float = 0.0) -> KNet:
    """Build K-Net with fresh weights.

    Args:
        task: ``"panoptic"`` (C = 133 with COCO: 100 thing + 53 stuff kernels) or
            ``"instance"`` (C = 80: 100 kernels).
        backbone: ``"resnet50"``, ``"resnet101"`` (mmdet "pytorch" style, eps 1e-5,
            ``frozen_stages``/``norm_eval``), ``"swin_t"`` / ``"swin_l"`` (Swin-T / Swin-L, window 7,
            mmdet's ``SwinTransformer`` as ``knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py`` builds it:
            FPN inputs ``C, 2C, 4C, 8C``; ``frozen_stages`` is mmdet Swin's, the original uses -1;
            ``norm_eval`` has nothing to act on, Swin has no batch norm) or ``"resnet_tiny"`` (tests).
        num_classes: C; default 133 (panoptic) / ``num_thing_classes`` (instance).
        num_thing_classes: thing classes (80); the stuff classes are ``num_thing_classes..C-1``.
        num_kernels: thing kernels (100).
        num_stages: kernel update stages (3).
        channels, num_heads, ffn_channels, num_groups: widths (256, 8, 2048, 32).
        frozen_stages, norm_eval: backbone freezing (mmdet; 1 and True).
        dcn: None, ``"DCN"`` (mmcv v1, what K-Net's R-101-DCN configs use) or ``"DCNv2"``: the
            3×3 convs of the ResNet stages flagged by ``stage_with_dcn`` (res2..res5) become
            deformable (``resnet50`` / ``resnet101`` / ``resnet_tiny``).
        backbone_drop_path: Swin's largest stochastic-depth rate (K-Net Swin-L: 0.2); ResNets
            have none and accept only 0.

    Raises:
        ValueError: unknown task, backbone or ``dcn``, ``num_thing_classes > num_classes``, a
            non-zero ``backbone_drop_path`` for a ResNet, or ``dcn`` with a Swin.
    """
    from kmax_deeplab.modeling.backbones.resnet import resnet_mmdet, resnet_tiny
    from kmax_deeplab.modeling.backbones.swin import swin

    if task not in TASKS:
        raise ValueError(f"unknown K-Net task {task!r}; expected one of {TASKS}")
    if num_classes is None:
        num_classes = 133 if task == "panoptic" else num_thing_classes
    if num_thing_classes > num_classes:
        raise ValueError(f"num_thing_classes {num_thing_classes} > num_classes {num_classes}")
    if backbone_drop_path and backbone not in SWIN_BACKBONES:
        raise ValueError(f"K-Net backbone {backbone!r} has no stochastic depth; got backbone_drop_path="
                         f"{backbone_drop_path}")
    if dcn is not None and backbone in SWIN_BACKBONES:
        raise ValueError(f"K-Net backbone {backbone!r} has no deformable convs; got dcn={dcn!r}")
    deform = dict(dcn=dcn, stage_with_dcn=tuple(stage_with_dcn)) if dcn is not None else {}
    if backbone in SWIN_BACKBONES:
        net = swin(SWIN_BACKBONES[backbone], drop_path=backbone_drop_path, frozen_stages=frozen_stages)
    elif backbone in ("resnet50", "resnet101"):
        net = resnet_mmdet(int(backbone[6:]), frozen_stages=frozen_stages, norm_eval=norm_eval, **deform)
    elif backbone == "resnet_tiny":
        net = resnet_tiny(bn_eps=1e-5, bn_momentum=0.1, frozen_stages=frozen_stages, norm_eval=norm_eval, **deform)
    else:
        raise ValueError(f"unknown K-Net backbone {backbone!r}; expected one of {BACKBONES}")
    neck = FPN([net.feature_spec(n).channels for n in FPN_FEATURES], channels)
    num_stuff = num_classes - num_thing_classes if task == "panoptic" else 0
    head = KernelInitHead(num_classes, num_kernels=num_kernels, num_stuff=num_stuff,
                          in_channels=channels, channels=channels, num_groups=num_groups)
    stages = [KernelUpdateHead(num_classes, channels=channels, num_heads=num_heads,
                               ffn_channels=ffn_channels) for _ in range(num_stages)]
    return KNet(net, neck, head, stages, task=task, num_thing_classes=num_thing_classes)
