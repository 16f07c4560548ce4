"""MaX-DeepLab: Axial-ResNet encoder with a dual-path memory + the shared mask heads.

Source: deeplab2 ``model/decoder/max_deeplab.py`` (``MaXDeepLab``), ``model/builder.py``,
``configs/coco/max_deeplab/*.textproto``; spec ``max_deeplab.md`` §2, §10.

* ``encoder``: :class:`~kmax_deeplab.modeling.backbones.axial_resnet.AxialResNet`
  (deeplab2's ``encoder`` checkpoint item).
* ``predictor``: the pixel-space head (5×5 depthwise-separable conv, 1×1 conv with
  bias, BN, L2 normalisation), the mask head (1-D conv-BN on the memory's mask feature),
  the 1-channel mask-logit BN (γ init 0.1) and the class head (1-D conv with bias, void
  last, + log(C·0.9/0.1) on the void logit every pass): the very head kMaX uses,
  :class:`~kmax_deeplab.modeling.heads.predictor.KMaXPredictor`, with ReLU.
* ``semantic_head`` (training only): MaX-S has the Panoptic-DeepLab decoder (ASPP
  6/12/18 on the ReLU'd stage-5 output, res3/res2 fusions, all resizes align-corners)
  and head; MaX-L's semantic feature is already at stride 4, so only the head.

Differences from deeplab2: none in the numbers. The output follows the shared contract
(:class:`~kmax_deeplab.modeling.outputs.MaskTransformerOutput`); MaX has no per-layer
auxiliary outputs (``aux_outputs`` is empty).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from kmax_deeplab.modeling.backbones.axial_resnet import AxialResNet
from kmax_deeplab.modeling.heads.predictor import KMaXPredictor
from kmax_deeplab.modeling.heads.semantic_head import AuxSemanticDecoder, AuxSemanticHead
from kmax_deeplab.modeling.outputs import MaskTransformerOutput

VARIANTS = ("s", "l")


class MaXDeepLab(nn.Module):
    """The MaX-DeepLab model, composed from built modules.

    Input ``images [B, 3, H, W]`` float RGB in 0..255 at exactly ``image_size`` (pad with
    127.5); normalised inside as x/127.5 − 1.

    Args:
        encoder: :class:`AxialResNet`.
        predictor: :class:`KMaXPredictor` (ReLU) on ``feature_panoptic`` and the memory.
        semantic_head: :class:`AuxSemanticDecoder` (reads ``feature_semantic``, ``res3``,
            ``res2``), :class:`AuxSemanticHead` (reads ``feature_semantic``) or None.
        num_classes: C (void excluded).
    """

    def __init__(self, encoder: AxialResNet, predictor: KMaXPredictor, semantic_head: Optional[nn.Module], *,
                 num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.semantic_head = semantic_head
        self.image_size = encoder.image_size
        self.num_classes = int(num_classes)
        self.num_queries = encoder.num_mask_slots
        self.register_buffer("pixel_mean", torch.full((3, 1, 1), 127.5), persistent=False)
        self.register_buffer("pixel_std", torch.full((3, 1, 1), 127.5), persistent=False)

    def forward_features(self, images: Tensor) -> Dict[str, Tensor]:
        """The encoder endpoints (see :meth:`AxialResNet.forward`) of a 0..255 batch."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"MaXDeepLab expects images [B, 3, H, W], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"MaXDeepLab expects float images in 0..255, got dtype {images.dtype}")
        return self.encoder((images - self.pixel_mean) / self.pixel_std)

    def forward(self, images: Tensor) -> MaskTransformerOutput:
        """Predict masks and classes.

        Args:
            images: ``[B, 3, H, W]`` float RGB 0..255, (H, W) == ``image_size``.

        Returns:
            :class:`MaskTransformerOutput`: ``pred_logits [B, N, C+1]`` (void last),
            ``pred_masks [B, N, h, w]`` (h = (H-1)//4+1), ``pixel_feature [B, 128, h, w]``,
            ``aux_outputs`` (empty) and, in training mode with a semantic head,
            ``semantic_logits [B, C+1, h, w]`` (void last).

        Raises:
            ValueError: wrong rank, channels, dtype or size.
        """
        f = self.forward_features(images)
        # [B, D_g, N] memory features -> class logits, mask logits on the stride-4 feature
        pred = self.predictor(f["transformer_mask_feature"], f["transformer_class_feature"], f["feature_panoptic"])
        out: MaskTransformerOutput = {"pred_logits": pred["class_logits"], "pred_masks": pred["mask_logits"],
                                      "pixel_feature": pred["pixel_feature"], "aux_outputs": []}
        if self.training and self.semantic_head is not None:
            out["semantic_logits"] = self.semantic_head(f["feature_semantic"], f["res3"], f["res2"])
        return out


def max_deeplab_encoder(variant: str, image_size: Sequence[int], *, num_queries: int = 128,
                        drop_path_keep_prob: float = 0.8, norm: str = "BN", **sizes: Any) -> AxialResNet:
    """The deeplab2 ``max_deeplab_s`` / ``max_deeplab_l`` encoder for a canvas.

    Args:
        sizes: optional :class:`AxialResNet` size overrides (``width_multiplier``,
            ``stem_width_multiplier``, ``num_blocks``, ``memory_channels``,
            ``base_transformer_expansion``, ``global_ffn_channels``, ``ffn_channels``) for small models.

    Raises:
        ValueError: unknown variant or a canvas the axial attention cannot cover.
    """
    if variant not in VARIANTS:
        raise ValueError(f"MaX-DeepLab variant must be one of {VARIANTS}, got {variant!r}")
    build = AxialResNet.max_deeplab_s if variant == "s" else AxialResNet.max_deeplab_l
    return build(image_size, num_mask_slots=num_queries, drop_path_keep_prob=drop_path_keep_prob, norm=norm, **sizes)


def build_max_deeplab(cfg: Any) -> MaXDeepLab:
    """Build :class:`MaXDeepLab` from a config section (duck typed).

    Reads ``variant`` (``"s"``/``"l"``), ``image_size``, ``num_classes``, ``num_queries``
    (128), ``drop_path_keep_prob`` (0.8), ``aux_semantic`` (``"decoder"``/``"none"``),
    ``norm`` and the size knobs of :class:`~kmax_deeplab.modeling.max_deeplab.config.MaXModelConfig`
    (``width_multiplier``, ``stem_width_multiplier``, ``num_blocks``, ``memory_channels``,
    ``transformer_expansion``, ``ffn_dim``, ``head_dim``, ``pixel_feature_dim``); missing
    fields take the deeplab2 COCO values.

    Raises:
        ValueError: bad variant, canvas or ``aux_semantic``.
    """
    variant = str(getattr(cfg, "variant", "s"))
    image_size = tuple(int(s) for s in cfg.image_size)
    norm = str(getattr(cfg, "norm", "BN"))
    num_classes = int(cfg.num_classes)
    sizes: Dict[str, Any] = {}
    for field, key in (("width_multiplier", "width_multiplier"), ("stem_width_multiplier", "stem_width_multiplier")):
        if float(getattr(cfg, field, 1.0)) != 1.0:
            sizes[key] = float(getattr(cfg, field))
    if tuple(getattr(cfg, "num_blocks", ()) or ()):
        sizes["num_blocks"] = tuple(int(b) for b in cfg.num_blocks)
    if int(getattr(cfg, "memory_channels", 0) or 0):
        sizes["memory_channels"] = sizes["global_ffn_channels"] = int(cfg.memory_channels)
    if float(getattr(cfg, "transformer_expansion", 0.0) or 0.0):
        sizes["base_transformer_expansion"] = float(cfg.transformer_expansion)
    if int(getattr(cfg, "ffn_dim", 2048)) != 2048:
        sizes["ffn_channels"] = int(cfg.ffn_dim)
    head_dim = int(getattr(cfg, "head_dim", 256))
    encoder = max_deeplab_encoder(variant, image_size, num_queries=int(getattr(cfg, "num_queries", 128)),
                                  drop_path_keep_prob=float(getattr(cfg, "drop_path_keep_prob", 0.8)), norm=norm,
                                  **sizes)
    predictor = KMaXPredictor(encoder.panoptic_channels, num_classes, query_dim=encoder.memory_feature_channels,
                              hidden_dim=head_dim, pixel_feature_dim=int(getattr(cfg, "pixel_feature_dim", 128)),
                              norm=norm, act="relu")
    aux = str(getattr(cfg, "aux_semantic", "decoder"))
    semantic_head: Optional[nn.Module] = None
    if aux == "decoder":
        if encoder.extra_decoder_num_stacks:  # MaX-L: feature_semantic is already at stride 4
            semantic_head = AuxSemanticHead(encoder.panoptic_channels, num_classes + 1, channels=head_dim, norm=norm,
                                            act="relu")
        else:
            semantic_head = AuxSemanticDecoder(
                encoder.semantic_channels, encoder.endpoint_channels["stage3"], encoder.endpoint_channels["stage2"],
                num_classes + 1, channels=head_dim, low_level_channels=(64, 32), low_level_activation="none", norm=norm,
                align_corners="always", act="relu")
    elif aux != "none":
        raise ValueError(f"model config: aux_semantic must be 'decoder' or 'none' for MaX-DeepLab, got {aux!r}")
    return MaXDeepLab(encoder, predictor, semantic_head, num_classes=num_classes)


__all__ = ["MaXDeepLab", "VARIANTS", "build_max_deeplab", "max_deeplab_encoder"]
