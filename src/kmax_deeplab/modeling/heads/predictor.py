"""Mask-transformer predictor head: class logits, mask logits and pixel features (kMaX spec §1.4;
MaX-DeepLab has the same heads).

Seven instances per model: one inside each transformer layer (its mask logits drive the
k-means assignment and give the auxiliary outputs) and the final one on the stride-4
panoptic feature.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct
from kmax_deeplab.modeling.layers.norm import frozen_affine, get_norm

VOID_PRIOR_PROB = 0.9


def void_logit_offset(num_classes: int, void_prior_prob: float = VOID_PRIOR_PROB) -> float:
    """The constant log(C · p / (1 − p)) added to the void logit on every pass (spec §1.4).

    COCO (C = 133): 7.0876; Cityscapes (19): 5.1417; ADE20K (150): 7.2079.
    """
    return math.log(num_classes * void_prior_prob / (1.0 - void_prior_prob))


class KMaXPredictor(nn.Module):
    """Pixel head, mask head and class head of kMaX (spec §1.4).

    Pixel head: 5×5 depthwise conv-BN-GELU, 1×1 conv to ``hidden_dim``-BN-GELU, 1×1 conv
    (with bias, std 0.01) to ``pixel_feature_dim``-BN, then L2 normalisation over
    channels. Mask head: 1-D conv-BN to ``pixel_feature_dim``; mask logits = ⟨pixel
    feature, kernel⟩ through a 1-channel BN (γ init 0.1, a learned temperature). Class
    head: 1-D conv with bias (std 0.01) to C+1, void last, plus
    :func:`void_logit_offset` on the void logit in training *and* inference.

    Args:
        in_channels: Cp, channels of the pixel input.
        num_classes: C (thing + stuff, without void).
        query_dim: channels of the mask / class embeddings (256).
        hidden_dim: width of the pixel head's 1×1 conv (256).
        pixel_feature_dim: D of the normalised pixel feature and the mask kernel (128).
        norm: batch-norm kind.
        act: pixel-head activation (``"gelu"`` kMaX, ``"relu"`` MaX-DeepLab, which shares
            this head: deeplab2 ``decoder/max_deeplab.py``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        query_dim: int = 256,
        hidden_dim: int = 256,
        pixel_feature_dim: int = 128,
        norm: str = "BN",
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self._pixel_space_head_conv0bnact = ConvNormAct(
            in_channels, in_channels, 5, depthwise=True, norm=norm, act=act)
        self._pixel_space_head_conv1bnact = ConvNormAct(in_channels, hidden_dim, 1, norm=norm, act=act)
        self._pixel_space_head_last_convbn = ConvNormAct(
            hidden_dim, pixel_feature_dim, 1, bias=True, norm=norm, init_std=0.01)
        self._transformer_mask_head = ConvNormAct(query_dim, pixel_feature_dim, 1, dim=1, norm=norm)
        self._transformer_class_head = ConvNormAct(
            query_dim, num_classes + 1, 1, dim=1, bias=True, norm="none", init_std=0.01)
        # A BN with one channel over [B, 1, N, h, w] (BatchNorm3d for "BN"; SyncBN takes any rank).
        self._pixel_space_mask_batch_norm = get_norm(norm, 1, dim=3)
        if isinstance(self._pixel_space_mask_batch_norm, nn.modules.batchnorm._BatchNorm):
            nn.init.constant_(self._pixel_space_mask_batch_norm.weight, 0.1)
        offset = torch.zeros(num_classes + 1)
        offset[-1] = void_logit_offset(num_classes)
        self.register_buffer("void_offset", offset, persistent=False)

    def forward(self, mask_embeddings: Tensor, class_embeddings: Tensor, pixel_feature: Tensor) -> Dict[str, Tensor]:
        """Predict masks and classes.

        Args:
            mask_embeddings: ``[B, query_dim, N]``.
            class_embeddings: ``[B, query_dim, N]``.
            pixel_feature: ``[B, Cp, h, w]``.

        Returns:
            dict with ``class_logits [B, N, C+1]`` (void last, offset added),
            ``mask_logits [B, N, h, w]`` and ``pixel_feature [B, D, h, w]`` (unit L2 norm
            over D).
        """
        x = self._pixel_space_head_conv0bnact(pixel_feature)
        x = self._pixel_space_head_conv1bnact(x)
        x = self._pixel_space_head_last_convbn(x)
        x = F.normalize(x, p=2, dim=1)

        # [B, C+1, N] -> [B, N, C+1]
        class_logits = self._transformer_class_head(class_embeddings).transpose(1, 2)
        class_logits = class_logits + self.void_offset.to(class_logits.dtype)
        kernel = self._transformer_mask_head(mask_embeddings)  # [B, D, N]
        affine = frozen_affine(self._pixel_space_mask_batch_norm, 1, kernel)
        if affine is not None:
            # eval: the 1-channel BN is a scalar affine; its scale goes into the kernel and
            # its shift into the product, saving two passes over [B, N, h, w].
            scale, shift = affine
            kernel = kernel * scale.to(kernel.dtype)
            # [B, N, D] x [B, D, h*w] -> [B, N, h*w] (+ shift) -> [B, N, h, w]
            mask_logits = torch.baddbmm(shift.to(x.dtype).reshape(1, 1, 1), kernel.transpose(1, 2),
                                        x.flatten(2)).unflatten(2, x.shape[-2:])
        else:
            # [B, D, h, w] x [B, D, N] -> [B, N, h, w]
            mask_logits = torch.einsum("bdhw,bdn->bnhw", x, kernel)
            # [B, N, h, w] -> [B, 1, N, h, w] -> 1-channel BN (batch statistics) -> [B, N, h, w]
            mask_logits = self._pixel_space_mask_batch_norm(mask_logits.unsqueeze(1)).squeeze(1)
        return {"class_logits": class_logits, "mask_logits": mask_logits, "pixel_feature": x}


__all__ = ["KMaXPredictor", "VOID_PRIOR_PROB", "void_logit_offset"]
