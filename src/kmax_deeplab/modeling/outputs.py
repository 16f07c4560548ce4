"""The output contract shared by every mask-transformer model (kMaX, MaX, K-Net).

Losses, post-processing and the trainer read only these keys, so they never branch on
the model family. The output stays a plain ``dict`` (DDP and ``torch.compile`` friendly).
"""

from __future__ import annotations

from typing import List, TypedDict

from torch import Tensor


class AuxOutput(TypedDict):
    """One auxiliary (per-decoder-layer) prediction, upsampled to the final stride-4 size.

    Keys:
        pred_logits: ``[B, N, C+1]`` class logits, void last.
        pred_masks: ``[B, N, h, w]`` mask logits.
        pixel_feature: ``[B, D, h, w]`` L2-normalised pixel features.
    """

    pred_logits: Tensor
    pred_masks: Tensor
    pixel_feature: Tensor


class MaskTransformerOutput(TypedDict, total=False):
    """Output of a mask-transformer forward pass.

    Keys:
        pred_logits: ``[B, N, C+1]`` float class logits of the final predictor, void last
            (kMaX adds the constant void-logit offset log(C·0.9/0.1) on every pass).
        pred_masks: ``[B, N, h, w]`` float mask logits at stride 4 of the canvas.
        pixel_feature: ``[B, D, h, w]`` float L2-normalised pixel features (D = 128).
        aux_outputs: list of :class:`AuxOutput`, one per transformer layer, in layer order.
        semantic_logits: ``[B, C+1, h, w]`` (COCO/ADE20K) or ``[B, C, h', w']`` (Cityscapes
            head at stride 32) auxiliary semantic logits; present in training mode only.
    """

    pred_logits: Tensor
    pred_masks: Tensor
    pixel_feature: Tensor
    aux_outputs: List[AuxOutput]
    semantic_logits: Tensor
