"""MaX-DeepLab's dual-path transformer layer (spec ``max_deeplab.md`` §2).

Source: deeplab2 ``model/layers/dual_path_transformer.py`` (``AttentionOperation``,
``DualPathTransformerLayer`` with memory self-attention and pixel-to-memory feedback on,
k-means cross-attention off). The pixel-to-pixel attention is the axial block that
precedes the layer (:mod:`kmax_deeplab.modeling.backbones.axial_resnet`).

Layouts: pixels ``[B, C, H, W]``, memory ``[B, D_m, N]`` (channels first, like every 1-D
conv here). Channel ``head·d_head + d`` inside q, k and v, as in deeplab2.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct
from kmax_deeplab.modeling.layers.drop_path import DropPath
from kmax_deeplab.modeling.layers.norm import get_norm


class AttentionOperation(nn.Module):
    """Multi-head attention with a BN on the logits and a BN + ReLU on the retrieved values.

    deeplab2 ``AttentionOperation``: logits ``q·k`` (no 1/√d), BN over heads, softmax over
    keys (fp32), retrieval, BN over (head, depth) channels, activation.

    Args:
        num_heads: h.
        value_depth: total value depth (h · d_v).
        norm: batch-norm kind.
    """

    def __init__(self, num_heads: int, value_depth: int, *, norm: str = "BN") -> None:
        super().__init__()
        self.num_heads = num_heads
        self._batch_norm_similarity = get_norm(norm, num_heads, dim=2)
        self._batch_norm_retrieved_value = get_norm(norm, value_depth, dim=1)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """``query [B, h, d, L]``, ``key [B, h, d, M]``, ``value [B, h, d_v, M]`` -> ``[B, h·d_v, L]``."""
        b, h, dv, _ = value.shape
        length = query.shape[-1]
        logits = torch.einsum("bhdl,bhdm->bhlm", query, key)  # [B, h, L, M]
        logits = self._batch_norm_similarity(logits)
        with torch.autocast(device_type=query.device.type, enabled=False):
            weights = F.softmax(logits.float(), dim=-1)
        weights = weights.to(value.dtype)
        retrieved = torch.einsum("bhlm,bhdm->bhdl", weights, value)  # [B, h, d_v, L]
        # [B, h, d_v, L] -> [B, h*d_v (head-major), L] -> BN over (head, depth) channels
        retrieved = self._batch_norm_retrieved_value(retrieved.reshape(b, h * dv, length))
        return F.relu(retrieved)


class DualPathTransformerLayer(nn.Module):
    """Memory-to-pixel + memory-to-memory attention, memory FFN, pixel-to-memory attention.

    Memory side: 1-D conv-BN-ReLU to the bottleneck, conv-BN to q|k|v; the memory queries
    attend under one softmax over ``[pixel keys; memory keys]``; conv-BN (γ = 0), drop
    path, residual, ReLU; FFN conv-BN-ReLU, conv-BN (γ = 0), drop path, residual, ReLU.
    Pixel side (non-activated input): ReLU, conv-BN-ReLU, conv-BN to q|k|v; pixel queries
    attend over the layer-input memory keys/values; conv-BN (γ = 0), drop path, residual
    (no ReLU). q|k|v projections are initialised with std ``bottleneck^-0.5``.

    Args:
        pixel_channels: C of the pixel input ``[B, C, H, W]``.
        memory_channels: D_m of the memory ``[B, D_m, N]``.
        filters: base width (128 for MaX-S); bottleneck ``filters·bottleneck_expansion``,
            key depth ``filters·key_expansion``, value depth ``filters·value_expansion``.
        num_heads: heads (8).
        ffn_channels: memory FFN width (2048).
        drop_path_keep_prob: keep probability of the three drop paths (per sample).
        norm: batch-norm kind.

    Raises:
        ValueError: depths not divisible by ``num_heads``.
    """

    def __init__(self, pixel_channels: int, memory_channels: int, filters: int = 128, *,
                 num_heads: int = 8, bottleneck_expansion: float = 2.0, key_expansion: float = 1.0,
                 value_expansion: float = 2.0, ffn_channels: int = 2048,
                 drop_path_keep_prob: float = 1.0, norm: str = "BN") -> None:
        super().__init__()
        bottleneck = int(round(filters * bottleneck_expansion))
        self.key_depth = int(round(filters * key_expansion))
        self.value_depth = int(round(filters * value_expansion))
        if self.key_depth % num_heads or self.value_depth % num_heads:
            raise ValueError(f"dual-path transformer depths {self.key_depth}/{self.value_depth} must "
                             f"divide by {num_heads} heads")
        self.num_heads = num_heads
        qkv = 2 * self.key_depth + self.value_depth
        std = bottleneck ** -0.5
        self._memory_conv1_bn_act = ConvNormAct(memory_channels, bottleneck, 1, dim=1, norm=norm, act="relu")
        self._pixel_conv1_bn_act = ConvNormAct(pixel_channels, bottleneck, 1, dim=1, norm=norm, act="relu")
        self._memory_qkv_conv_bn = ConvNormAct(bottleneck, qkv, 1, dim=1, norm=norm, init_std=std)
        self._pixel_qkv_conv_bn = ConvNormAct(bottleneck, qkv, 1, dim=1, norm=norm, init_std=std)
        self._memory_attention = AttentionOperation(num_heads, self.value_depth, norm=norm)
        self._pixel_attention = AttentionOperation(num_heads, self.value_depth, norm=norm)
        self._memory_conv3_bn = ConvNormAct(self.value_depth, memory_channels, 1, dim=1, norm=norm,
                                            norm_init_zero=True)
        self._memory_ffn_conv1_bn_act = ConvNormAct(memory_channels, ffn_channels, 1, dim=1, norm=norm,
                                                    act="relu")
        self._memory_ffn_conv2_bn = ConvNormAct(ffn_channels, memory_channels, 1, dim=1, norm=norm,
                                                norm_init_zero=True)
        self._pixel_conv3_bn = ConvNormAct(self.value_depth, pixel_channels, 1, dim=1, norm=norm,
                                           norm_init_zero=True)
        drop = 1.0 - drop_path_keep_prob
        self.drop_path_pixel = DropPath(drop)
        self.drop_path_memory_attention = DropPath(drop)
        self.drop_path_memory_ffn = DropPath(drop)

    def _heads(self, qkv: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        # [B, 2kd+vd, L] -> q, k [B, h, kd/h, L], v [B, h, vd/h, L]
        q, k, v = torch.split(qkv, [self.key_depth, self.key_depth, self.value_depth], dim=1)
        return tuple(t.unflatten(1, (self.num_heads, -1)) for t in (q, k, v))  # type: ignore[return-value]

    def forward(self, pixel: Tensor, memory: Tensor) -> Tuple[Tensor, Tensor]:
        """``pixel [B, C, H, W]`` (non-activated), ``memory [B, D_m, N]`` -> same shapes."""
        b, c, height, width = pixel.shape
        pixel_in = pixel.reshape(b, c, height * width)  # [B, C, HW]
        memory_space = self._memory_conv1_bn_act(memory)
        pixel_space = self._pixel_conv1_bn_act(F.relu(pixel_in))
        m_q, m_k, m_v = self._heads(self._memory_qkv_conv_bn(memory_space))
        p_q, p_k, p_v = self._heads(self._pixel_qkv_conv_bn(pixel_space))

        # M2P + M2M under one softmax: keys/values [pixels; memory] along the key axis.
        m = self._memory_attention(m_q, torch.cat([p_k, m_k], dim=-1), torch.cat([p_v, m_v], dim=-1))
        m = self.drop_path_memory_attention(self._memory_conv3_bn(m))
        memory_out = F.relu(memory + m)
        f = self._memory_ffn_conv2_bn(self._memory_ffn_conv1_bn_act(memory_out))
        memory_out = F.relu(memory_out + self.drop_path_memory_ffn(f))

        # P2M: pixel queries over the layer-input memory keys/values.
        p = self._pixel_attention(p_q, m_k, m_v)
        p = self.drop_path_pixel(self._pixel_conv3_bn(p))
        pixel_out = (pixel_in + p).reshape(b, c, height, width)
        return pixel_out, memory_out


__all__ = ["AttentionOperation", "DualPathTransformerLayer"]
