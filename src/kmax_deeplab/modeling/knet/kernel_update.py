"""K-Net's kernel update stage: assemble, update, interact, predict (knet.md §5).

One :class:`KernelUpdateHead` is one of K-Net's 3 stages (config ``roi_head.mask_head.{i}``).
It is generic: it knows nothing of things and stuff, only N kernels, C classes and a
feature map, so the semantic K-Net (issue 13) reuses it with ``gather="softmax"``.

Source: ZwwWayne/K-Net ``knet/det/kernel_update_head.py`` and ``knet/kernel_updator.py``;
mmcv 1.x ``MultiheadAttention`` (adds its input as a residual) and ``FFN`` (likewise).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.knet.kernel_head import prior_bias
from kmax_deeplab.modeling.knet.neck import NORM_EPS

__all__ = ["KernelUpdateHead", "KernelUpdator", "StageOutput", "GATHER_MODES"]

GATHER_MODES = ("binary", "softmax")


class KernelUpdator(nn.Module):
    """Adaptive kernel update (knet.md §5.3; K-Net ``KernelUpdator``).

    With group features F^K and previous kernels K (both ``[M, D]``):

    1. ``(a, ψ_F) = dynamic_layer(F^K)``, ``(b, ψ_K) = input_layer(K)``: each Linear emits
       ``[gate half | output half]`` in that order;
    2. ``G = a ⊙ b``;
    3. ``g_K = σ(input_norm_in(input_gate(G)))``, ``g_F = σ(norm_in(update_gate(G)))``;
    4. ``K̃ = g_F ⊙ norm_out(ψ_F) + g_K ⊙ input_norm_out(ψ_K)``;
    5. ``relu(fc_norm(fc_layer(K̃)))``.

    Every Linear has a bias: the reference writes ``nn.Linear(in, out, 1)`` for four of them,
    which passes ``bias=True`` positionally (knet.md §12). LayerNorm eps 1e-5.

    Args:
        in_channels: D of the features and kernels (256).
        feat_channels: width of each half (256).
        out_channels: output width (256).
    """

    def __init__(self, in_channels: int = 256, feat_channels: int = 256,
                 out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.dynamic_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_gate = nn.Linear(in_channels, feat_channels)
        self.update_gate = nn.Linear(in_channels, feat_channels)
        self.norm_in = nn.LayerNorm(feat_channels, eps=NORM_EPS)
        self.norm_out = nn.LayerNorm(feat_channels, eps=NORM_EPS)
        self.input_norm_in = nn.LayerNorm(feat_channels, eps=NORM_EPS)
        self.input_norm_out = nn.LayerNorm(feat_channels, eps=NORM_EPS)
        self.fc_layer = nn.Linear(feat_channels, out_channels)
        self.fc_norm = nn.LayerNorm(out_channels, eps=NORM_EPS)

    def forward(self, group_feats: Tensor, kernels: Tensor) -> Tensor:
        """Updated kernels.

        Args:
            group_feats: ``[..., in_channels]`` assembled features F^K.
            kernels: ``[..., in_channels]`` previous kernels, same leading shape.

        Returns:
            ``[..., out_channels]``.
        """
        c = self.feat_channels
        params = self.dynamic_layer(group_feats)
        param_in, param_out = params[..., :c], params[..., c:]
        inputs = self.input_layer(kernels)
        input_in, input_out = inputs[..., :c], inputs[..., c:]
        gate = input_in * param_in
        input_gate = self.input_norm_in(self.input_gate(gate)).sigmoid()
        update_gate = self.norm_in(self.update_gate(gate)).sigmoid()
        out = update_gate * self.norm_out(param_out) + input_gate * self.input_norm_out(input_out)
        return F.relu(self.fc_norm(self.fc_layer(out)))


class FFN(nn.Module):
    """``x + fc2(relu(fc1(x)))`` (mmcv ``FFN`` with 2 FCs, dropout 0, identity added).

    Args:
        channels: D (256).
        hidden: FFN width (2048).
    """

    def __init__(self, channels: int = 256, hidden: int = 2048) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., D]`` -> ``[..., D]``."""
        return x + self.fc2(F.relu(self.fc1(x)))


def _fc_norm_relu(channels: int, depth: int) -> nn.ModuleList:
    """``depth`` × [Linear (no bias), LayerNorm, ReLU] (indices 0, 1, 2, 3, ... as K-Net's)."""
    layers = nn.ModuleList()
    for _ in range(depth):
        layers.extend([nn.Linear(channels, channels, bias=False),
                       nn.LayerNorm(channels, eps=NORM_EPS), nn.ReLU()])
    return layers


class StageOutput(NamedTuple):
    """One update stage's prediction.

    Attributes:
        cls_logits: ``[B, N, C]`` per-class sigmoid logits (no background logit); None for a
            stage built without the class branch (``with_cls=False``, the semantic K-Net).
        mask_logits: ``[B, N, h, w]`` mask logits at the feature stride (8).
        kernels: ``[B, N, D]`` updated kernels K_i, the next stage's input.
    """

    cls_logits: Tensor | None
    mask_logits: Tensor
    kernels: Tensor


class KernelUpdateHead(nn.Module):
    """One kernel update stage (knet.md §5).

    ``F' = feat_transform(F)`` (1×1 conv, bias, no norm); group features
    ``F^K_n = Σ_hw w_n(h, w) F'(h, w)`` with ``w = 𝟙[σ(M) > 0.5]`` (``gather="binary"``,
    K-Net det) or ``softmax_N(M)`` (``"softmax"``, semantic K-Net); ``K̃ = updator(F^K, K)``;
    ``K̂ = LN(K̃ + MHA(K̃))`` over the N kernels of each image; ``K_i = LN(K̂ + FFN(K̂))``;
    class logits ``fc_cls(cls_fcs(K_i))``; mask kernels ``fc_mask(mask_fcs(K_i))``; new masks
    ``M_i = <mask kernel, F'>`` per pixel (a 1×1 dynamic conv).

    Init (K-Net ``init_weights``): xavier-uniform on every parameter with dim > 1,
    ``fc_cls.bias`` = −log(99) (prior 0.01), other biases and LayerNorms torch defaults.

    Args:
        num_classes: C.
        channels: D (256).
        num_heads: attention heads (8).
        ffn_channels: FFN width (2048).
        num_cls_fcs, num_mask_fcs: depth of the class / mask FC stacks (1, 1).
        gather: ``"binary"`` or ``"softmax"`` group-feature weights (see above).
        mask_threshold: sigmoid threshold of the binary weights (0.5).
        with_cls: build the class branch (``cls_fcs``, ``fc_cls``); the semantic K-Net's
            stage has none (``knet/seg/kernel_update_head.py``: ``mask_fcs`` / ``fc_mask``
            only) and returns ``cls_logits=None``.
        updator_channels: width U of the :class:`KernelUpdator` (default D). With U < D
            (U divides D) every D-d kernel and group feature is cut into D/U consecutive
            U-d pieces updated independently by the one updator and concatenated again, as
            the original's ``reshape(-1, in_channels)`` does (the semantic K-Net + FCN: 512-d
            kernels, a 256-d updator; knet.md §13).

    Raises:
        ValueError: unknown ``gather``; ``updator_channels`` not dividing ``channels``.
    """

    def __init__(self, num_classes: int, *, channels: int = 256, num_heads: int = 8,
                 ffn_channels: int = 2048, num_cls_fcs: int = 1, num_mask_fcs: int = 1,
                 gather: str = "binary", mask_threshold: float = 0.5, with_cls: bool = True,
                 updator_channels: int | None = None) -> None:
        super().__init__()
        if gather not in GATHER_MODES:
            raise ValueError(f"unknown gather mode {gather!r}; expected one of {GATHER_MODES}")
        u = channels if updator_channels is None else int(updator_channels)
        if u <= 0 or channels % u:
            raise ValueError(f"updator_channels ({u}) must divide channels ({channels})")
        self.num_classes = num_classes
        self.channels = channels
        self.updator_channels = u
        self.with_cls = with_cls
        self.gather = gather
        self.mask_threshold = mask_threshold
        self.feat_transform = nn.Conv2d(channels, channels, 1)
        self.updator = KernelUpdator(u, u, u)
        self.attention = nn.MultiheadAttention(channels, num_heads, dropout=0.0)
        self.attention_norm = nn.LayerNorm(channels, eps=NORM_EPS)
        self.ffn = FFN(channels, ffn_channels)
        self.ffn_norm = nn.LayerNorm(channels, eps=NORM_EPS)
        if with_cls:
            self.cls_fcs = _fc_norm_relu(channels, num_cls_fcs)
            self.fc_cls = nn.Linear(channels, num_classes)
        self.mask_fcs = _fc_norm_relu(channels, num_mask_fcs)
        self.fc_mask = nn.Linear(channels, channels)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if with_cls:
            nn.init.constant_(self.fc_cls.bias, prior_bias(0.01))

    def group_weights(self, masks: Tensor) -> Tensor:
        """Assembling weights ``[B, N, h, w]`` of mask logits ``[B, N, h, w]`` (no gradient)."""
        if self.gather == "binary":
            return (masks.sigmoid() > self.mask_threshold).to(masks.dtype)
        return masks.softmax(dim=1)

    def forward(self, x: Tensor, kernels: Tensor, masks: Tensor) -> StageOutput:
        """One update.

        Args:
            x: ``[B, D, h, w]`` feature map (K-Net ``x_feats``, stride 8).
            kernels: ``[B, N, D]`` previous kernels.
            masks: ``[B, N, h', w']`` previous mask logits; resized bilinearly to ``(h, w)``
                when the sizes differ.

        Returns:
            :class:`StageOutput` with ``mask_logits`` at ``(h, w)`` (``cls_logits`` None
            without the class branch).
        """
        x = self.feat_transform(x)
        if masks.shape[-2:] != x.shape[-2:]:
            masks = F.interpolate(masks, x.shape[-2:], mode="bilinear", align_corners=False)
        weights = self.group_weights(masks)
        group_feats = torch.einsum("bnhw,bchw->bnc", weights, x)
        u = self.updator_channels
        if u == self.channels:
            obj = self.updator(group_feats, kernels)  # [B, N, D]
        else:  # D/U pieces per kernel, one updator (the original's reshape(-1, in_channels))
            b, n, d = group_feats.shape
            obj = self.updator(group_feats.reshape(b, n, d // u, u), kernels.reshape(b, n, d // u, u))
            obj = obj.reshape(b, n, d)
        seq = obj.transpose(0, 1)  # [N, B, D], sequence first
        seq = self.attention_norm(seq + self.attention(seq, seq, seq, need_weights=False)[0])
        obj = self.ffn_norm(self.ffn(seq.transpose(0, 1)))
        cls_logits, mask_feat = None, obj
        if self.with_cls:
            cls_feat = obj
            for layer in self.cls_fcs:
                cls_feat = layer(cls_feat)
            cls_logits = self.fc_cls(cls_feat)
        for layer in self.mask_fcs:
            mask_feat = layer(mask_feat)
        mask_kernels = self.fc_mask(mask_feat)  # [B, N, D]
        new_masks = torch.einsum("bnc,bchw->bnhw", mask_kernels, x)
        return StageOutput(cls_logits, new_masks, obj)
