"""The output contract shared by every mask-transformer model (kMaX, MaX, K-Net).

Losses, post-processing and the trainer read only these keys, so they never branch on
the model family. The output stays a plain ``dict`` (DDP and ``torch.compile`` friendly).
How the logits become probabilities is declared by the family (``Family.class_activation``:
``softmax_void`` over ``C+1`` logits with void last, or ``sigmoid`` over ``C``;
``Family.mask_activation``: ``softmax`` over queries or ``sigmoid`` per mask), and read by
the post-processing (``modeling/postprocess.py``).
"""

from __future__ import annotations

from typing import List, TypedDict

from torch import Tensor


class AuxOutput(TypedDict, total=False):
    """One auxiliary (per-decoder-layer) prediction, upsampled to the final stride-4 size.

    Keys:
        pred_logits: ``[B, N, C+1]`` class logits, void last.
        pred_masks: ``[B, N, h, w]`` mask logits.
        pixel_feature: ``[B, D, h, w]`` L2-normalised pixel features (optional).
    """

    pred_logits: Tensor
    pred_masks: Tensor
    pixel_feature: Tensor


class MaskTransformerOutput(TypedDict, total=False):
    """Output of a mask-transformer forward pass.

    Keys:
        pred_logits: ``[B, N, C+1]`` float class logits of the final predictor, void last
            (``softmax_void`` families; kMaX adds the constant void-logit offset
            log(C·0.9/0.1) on every pass), or ``[B, N, C]`` (``sigmoid`` families).
        pred_masks: ``[B, N, h, w]`` float mask logits at the family's mask stride (4) of
            the input.
        pixel_feature: optional ``[B, D, h, w]`` float L2-normalised pixel features (kMaX:
            D = 128, read by its instance-discrimination loss).
        aux_outputs: list of :class:`AuxOutput`, one per transformer layer, in layer order.
        semantic_logits: ``[B, C+1, h, w]`` (COCO/ADE20K) or ``[B, C, h', w']`` (Cityscapes
            head at stride 32) auxiliary semantic logits; present in training mode only.
    """

    pred_logits: Tensor
    pred_masks: Tensor
    pixel_feature: Tensor
    aux_outputs: List[AuxOutput]
    semantic_logits: Tensor
