"""kMaX-DeepLab: backbone + pixel decoder + k-means transformer decoder (spec §1).

State-dict layout (spec §5.1) mirrors the bytedance detectron2 checkpoint with the prefix
``sem_seg_head.pixel_decoder.`` -> ``pixel_decoder.``, ``sem_seg_head.predictor.`` ->
``predictor.``, ``backbone.`` unchanged and ``_predcitor`` spelled ``_predictor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from kmax_deeplab.modeling.kmax.pixel_decoder import KMaXPixelDecoder, deeplab2_decoder_atrous_rate
from kmax_deeplab.modeling.kmax.semantic_head import AuxSemanticDecoder, AuxSemanticHead
from kmax_deeplab.modeling.kmax.transformer_decoder import KMaXTransformerDecoder
from kmax_deeplab.modeling.layers.sync_bn import convert_sync_batchnorm  # noqa: F401  (re-export)
from kmax_deeplab.modeling.outputs import MaskTransformerOutput

REFERENCES = ("bytedance", "deeplab2")
AUX_SEMANTIC = ("decoder", "head", "none")
# The optional fifth decoder stage on the stem skip (Cityscapes, spec §1.2 table).
STEM_STAGE = (32, 1, "bottleneck")


@dataclass(frozen=True)
class ReferenceBehaviour:
    """What ``model.reference`` selects where bytedance and deeplab2 build different networks.

    One row per switch of ``docs/parity.md`` ("Behaviour switches"); :func:`reference_behaviour`
    fills it. Differences that live in the checkpoint layout (deeplab2's class-head order
    [things, stuff, void] and its aux semantic void channel 0) are undone by the converter
    (:mod:`kmax_deeplab.checkpoints.deeplab2_tf`), so the model's class order is the same
    (dataset order, void last) under both references.

    Attributes:
        align_corners: resize rule of the decoder fuses and the aux semantic upsamplings
            (``"bytedance"``: on iff the source width is odd; ``"always"``: deeplab2).
        bottleneck_dilation: atrous rate of the 3×3 conv of every pixel-decoder bottleneck
            block (1 bytedance; 2 deeplab2, :func:`deeplab2_decoder_atrous_rate`).
        low_level_activation: applied to res3/res2 before the aux semantic decoder
            (``"none"`` bytedance; deeplab2: the backbone's own, ReLU for ResNets, GELU for
            ConvNeXt).
        postprocess_variant: the default panoptic merging (``"bytedance"`` or
            ``"deeplab2"``: ``>=`` thresholds, area limits, crop-resolution merging).
    """

    align_corners: str
    bottleneck_dilation: int
    low_level_activation: str
    postprocess_variant: str


def reference_behaviour(reference: str, backbone: str) -> ReferenceBehaviour:
    """The :class:`ReferenceBehaviour` of ``reference`` for a model with ``backbone``.

    Raises:
        ValueError: unknown ``reference``, or (deeplab2) a backbone whose activation is unknown.
    """
    if reference == "bytedance":
        return ReferenceBehaviour("bytedance", 1, "none", "bytedance")
    if reference != "deeplab2":
        raise ValueError(f"model config: reference must be one of {REFERENCES}, got {reference!r}")
    name = str(backbone)
    if name.startswith("convnext"):
        act = "gelu"  # deeplab2 model/pixel_encoder/convnext.py: res{i} = GELU(stage{i})
    elif name.startswith("resnet"):
        act = "relu"  # deeplab2 model/pixel_encoder/axial_resnet.py: activation="relu"
    else:
        raise ValueError(f"model config: reference 'deeplab2' needs the activation of backbone {name!r} "
                         "(known: resnet*, convnext*)")
    return ReferenceBehaviour("always", deeplab2_decoder_atrous_rate(), act, "deeplab2")


class KMaXDeepLab(nn.Module):
    """The kMaX-DeepLab model, composed from built modules.

    Input ``images [B, 3, H, W]`` float RGB in 0..255 at exactly ``image_size``; the model
    normalises them as x/127.5 − 1 (``pixel_mean``/``pixel_std`` non-persistent buffers).
    Output: :class:`MaskTransformerOutput` (``semantic_logits`` in training mode only,
    when the decoder carries an aux semantic head).

    Args:
        backbone: module mapping ``[B, 3, H, W]`` to a dict of features containing
            ``pixel_decoder.in_features``.
        pixel_decoder: :class:`KMaXPixelDecoder`.
        predictor: :class:`KMaXTransformerDecoder` (stored as ``predictor``).
        image_size: (H, W) the model is built for.
        pixel_mean / pixel_std: per-channel normalisation (127.5, 127.5).
    """

    def __init__(
        self,
        backbone: nn.Module,
        pixel_decoder: KMaXPixelDecoder,
        predictor: KMaXTransformerDecoder,
        *,
        image_size: Sequence[int],
        pixel_mean: Sequence[float] = (127.5, 127.5, 127.5),
        pixel_std: Sequence[float] = (127.5, 127.5, 127.5),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_classes = predictor.num_classes
        self.num_queries = predictor.num_queries
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)

    def forward(self, images: Tensor) -> MaskTransformerOutput:
        """Predict masks and classes for a batch.

        Args:
            images: ``[B, 3, H, W]`` float RGB 0..255, (H, W) == ``image_size``; pad with
                127.5 (mean grey) to reach it.

        Returns:
            :class:`MaskTransformerOutput` with ``pred_logits [B, N, C+1]``,
            ``pred_masks [B, N, h, w]``, ``pixel_feature [B, 128, h, w]``, ``aux_outputs``
            and, in training mode, ``semantic_logits``.

        Raises:
            ValueError: wrong rank, channel count, dtype or spatial size.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"KMaXDeepLab expects images [B, 3, H, W], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"KMaXDeepLab expects float images in 0..255, got dtype {images.dtype}")
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"KMaXDeepLab was built for image_size {self.image_size[0]}x{self.image_size[1]} "
                f"(axial position tables are fixed) but got {images.shape[-2]}x{images.shape[-1]}; "
                "resize the longer side and pad with 127.5")
        x = (images - self.pixel_mean) / self.pixel_std
        features = self.backbone(x)
        decoded = self.pixel_decoder(features)
        return self.predictor(decoded.multi_scale_features, decoded.panoptic_feature, decoded.semantic_features)


def _stage_settings(cfg: Any) -> tuple[list[int], list[int], list[str]]:
    filters = list(cfg.decoder_filters)
    blocks = list(cfg.decoder_num_blocks)
    types = list(cfg.decoder_block_types)
    if not (len(filters) == len(blocks) == len(types)):
        raise ValueError(
            f"model config: decoder_filters {filters}, decoder_num_blocks {blocks} and "
            f"decoder_block_types {types} must have equal lengths")
    wanted = 5 if cfg.use_stem_skip else 4
    if cfg.use_stem_skip and len(filters) == 4:
        filters.append(STEM_STAGE[0])
        blocks.append(STEM_STAGE[1])
        types.append(STEM_STAGE[2])
    if len(filters) != wanted:
        raise ValueError(
            f"model config: {len(filters)} decoder stages given, need {wanted} "
            f"(use_stem_skip={cfg.use_stem_skip})")
    return filters, blocks, types


def decoder_inputs(cfg: Any, specs: dict) -> list[str]:
    """Backbone features the pixel decoder reads, coarsest first (spec §1.2).

    ``res5, res4, res3, res2``, plus the stem skip for Cityscapes. bytedance orders the inputs by a
    stable sort on the declared stride of ``stem, res2, ..., res5`` (``kmax_pixel_decoder.py``,
    ``sorted(input_shape.items(), key=lambda x: -x[1].stride)``): its post-max-pool R50 stem has
    stride 4, ties with res2 and so comes *before* it (the stride-4 stage fuses the 64-channel stem,
    the last stage res2, and the final masks are at stride 4); its ConvNeXt wrapper declares the
    stem as stride 2, so there, as in deeplab2 (stem stride 2 for R50), the stem comes last.

    Args:
        cfg: the model config (``use_stem_skip``, ``reference``, ``backbone``).
        specs: name -> feature spec (``stride``) of the backbone.
    """
    names = ["res5", "res4", "res3", "res2"]
    if not cfg.use_stem_skip:
        return names
    if (cfg.reference == "bytedance" and not str(cfg.backbone).startswith("convnext")
            and "stem" in specs and "res2" in specs and specs["stem"].stride == specs["res2"].stride):
        return ["res5", "res4", "res3", "stem", "res2"]
    return names + ["stem"]


def build_kmax(cfg: Any, *, backbone: Optional[nn.Module] = None) -> KMaXDeepLab:
    """Build :class:`KMaXDeepLab` from a ``ModelConfig``-like object (duck typed).

    Reads ``backbone``, ``backbone_drop_path``, ``num_classes``, ``num_queries``,
    ``image_size``, ``decoder_filters``, ``decoder_num_blocks``, ``decoder_block_types``,
    ``use_stem_skip``, ``transformer_layers``, ``hidden_dim``, ``key_dim``, ``value_dim``,
    ``ffn_dim``, ``num_heads``, ``pixel_feature_dim``, ``drop_path``, ``aux_semantic``,
    ``reference`` and ``norm``.

    ``reference`` selects the network where bytedance and deeplab2 differ
    (:func:`reference_behaviour`; ``docs/parity.md``): with ``"deeplab2"`` the 3×3 convs
    of the pixel decoder's bottleneck blocks are atrous with rate 2, the aux semantic
    decoder receives res3/res2 activated by the backbone's activation (ReLU for ResNets,
    GELU for ConvNeXt), and every bilinear resize aligns corners (bytedance does so only
    when the source width is odd, which differs at the stride-32 map when ``image_size`` is
    32k+1 with k odd). The TF R50 network itself is the ``resnet50_deeplab2`` backbone.
    Everything else (bytedance == TF) is shared.

    The aux semantic decoder's width is ``hidden_dim`` (256 in every real preset).

    Args:
        cfg: the model config section.
        backbone: an already built backbone to use instead of ``build_backbone(cfg.backbone)``
            (it must expose ``feature_info``: entries with ``name``, ``channels``, ``stride``).

    Raises:
        ValueError: inconsistent sizes, an image side not of the form 32k+1, unknown
            ``aux_semantic``/``reference``.
    """
    behaviour = reference_behaviour(cfg.reference, cfg.backbone)
    if cfg.aux_semantic not in AUX_SEMANTIC:
        raise ValueError(f"model config: aux_semantic must be one of {AUX_SEMANTIC}, got {cfg.aux_semantic!r}")
    image_size = tuple(int(s) for s in cfg.image_size)
    if len(image_size) != 2 or any(s < 33 or (s - 1) % 32 for s in image_size):
        raise ValueError(f"model config: image_size {list(cfg.image_size)} must be two sides of the form 32k+1")
    if backbone is None:
        from kmax_deeplab.modeling.backbones import build_backbone

        backbone = build_backbone(cfg.backbone, drop_path=cfg.backbone_drop_path, norm=cfg.norm)
    specs = {spec.name: spec for spec in backbone.feature_info}
    names = decoder_inputs(cfg, specs)
    missing = [n for n in names if n not in specs]
    if missing:
        raise ValueError(f"backbone {cfg.backbone!r} does not provide features {missing}")
    filters, blocks, types = _stage_settings(cfg)
    align_corners = behaviour.align_corners
    pixel_decoder = KMaXPixelDecoder(
        names, [specs[n].channels for n in names], [specs[n].stride for n in names],
        image_size=image_size, filters=filters, num_blocks=blocks, block_types=types,
        num_heads=8, drop_path=0.0, norm=cfg.norm, align_corners=align_corners,
        bottleneck_dilation=behaviour.bottleneck_dilation)

    num_classes = int(cfg.num_classes)
    semantic_head: Optional[nn.Module] = None
    if cfg.aux_semantic == "decoder":
        semantic_head = AuxSemanticDecoder(
            specs["res5"].channels, specs["res3"].channels, specs["res2"].channels, num_classes + 1,
            channels=cfg.hidden_dim,
            low_level_activation=behaviour.low_level_activation,
            norm=cfg.norm, align_corners=align_corners)
    elif cfg.aux_semantic == "head":
        semantic_head = AuxSemanticHead(specs["res5"].channels, num_classes, channels=cfg.hidden_dim,
                                        norm=cfg.norm)
    predictor = KMaXTransformerDecoder(
        pixel_decoder.out_channels[:3], pixel_decoder.out_channels[-1], num_classes, int(cfg.num_queries),
        layers_per_stage=tuple(cfg.transformer_layers), hidden_dim=cfg.hidden_dim, key_dim=cfg.key_dim,
        value_dim=cfg.value_dim, ffn_dim=cfg.ffn_dim, num_heads=cfg.num_heads,
        pixel_feature_dim=cfg.pixel_feature_dim, drop_path=cfg.drop_path, norm=cfg.norm,
        semantic_head=semantic_head)
    return KMaXDeepLab(backbone, pixel_decoder, predictor, image_size=image_size)


__all__ = ["KMaXDeepLab", "ReferenceBehaviour", "build_kmax", "convert_sync_batchnorm", "decoder_inputs",
           "reference_behaviour"]
