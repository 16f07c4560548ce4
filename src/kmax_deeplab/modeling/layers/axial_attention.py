"""Position-sensitive axial attention (Axial-DeepLab; spec §1.2, §5.1).

One axis: a 1×1 conv (no bias) and BN give q (key depth), k (key depth) and v (value
depth); three logits per head, q·k, q·r_q and k·r_k, with r looked up from learned
relative-position tables (2·255−1 = 509 rows, offset = key − query + 254), are stacked
(type-major, then head) into one BN of 3·heads channels and summed, with no 1/√d
scaling; softmax over keys in fp32; the weights retrieve v and a value position table,
the two results are stacked (type, head, depth) into one BN of 2·value_depth channels
and summed. The 2-D layer runs the height axis (over columns) and then the width axis.

Parameter names match the bytedance checkpoint: ``qkv_transform.conv.weight``,
``_{query,key,value}_rpe._embeddings.weight``, ``_batch_norm_{qkv,similarity,retrieved_output}``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct, trunc_normal_
from kmax_deeplab.modeling.layers.norm import get_norm

MAX_SPAN = 255


class RelativePositionalEncoding(nn.Module):
    """Learned relative-position table for a global 1-D attention of fixed length L.

    ``forward()`` returns ``[L, L, depth]``: entry (l, m) is row ``m − l + MAX_SPAN − 1`` of
    ``_embeddings.weight [2·MAX_SPAN−1, depth]`` (query l, key m). Rows are initialised
    from a truncated normal with std 1.

    Args:
        length: L, the query and key length of the axis (at most ``MAX_SPAN``).
        depth: per-head depth.

    Raises:
        ValueError: ``length`` outside ``1..MAX_SPAN``.
    """

    def __init__(self, length: int, depth: int) -> None:
        super().__init__()
        if not 1 <= length <= MAX_SPAN:
            raise ValueError(f"axial attention length {length} must be in 1..{MAX_SPAN}")
        self.length = length
        self.depth = depth
        self._embeddings = nn.Embedding(2 * MAX_SPAN - 1, depth)
        trunc_normal_(self._embeddings.weight, 1.0)
        pos = torch.arange(length)
        # [L(query), L(key)] table rows: key - query + 254.
        self.register_buffer("index", pos[None, :] - pos[:, None] + MAX_SPAN - 1, persistent=False)

    def forward(self) -> Tensor:
        # [L*L] row ids -> [L*L, depth] -> [L, L, depth]
        return self._embeddings.weight[self.index.reshape(-1)].reshape(self.length, self.length, self.depth)


class AxialAttention1d(nn.Module):
    """Global multi-head position-sensitive attention along one axis.

    Input ``[B', D_in, L]`` (B' = B times the other spatial size); output
    ``[B', value_depth, L]`` of the input dtype (the softmax runs in fp32).

    Args:
        in_channels: D_in.
        length: L; the input length must equal it (the position tables are built for it).
        key_depth: total query/key depth (f); per head f / num_heads.
        value_depth: total value depth (2f); per head 2f / num_heads.
        num_heads: heads (8).
        norm: batch-norm kind for the three BNs.

    Raises:
        ValueError: depths not divisible by ``num_heads``.
    """

    def __init__(
        self,
        in_channels: int,
        length: int,
        *,
        key_depth: int,
        value_depth: int,
        num_heads: int = 8,
        norm: str = "BN",
    ) -> None:
        super().__init__()
        if key_depth % num_heads or value_depth % num_heads:
            raise ValueError(
                f"axial attention depths {key_depth}/{value_depth} must divide by {num_heads} heads"
            )
        self.length = length
        self.key_depth = key_depth
        self.value_depth = value_depth
        self.num_heads = num_heads
        self.qkv_transform = ConvNormAct(
            in_channels, 2 * key_depth + value_depth, 1, dim=1, norm="none",
            init_std=in_channels ** -0.5,
        )
        self._query_rpe = RelativePositionalEncoding(length, key_depth // num_heads)
        self._key_rpe = RelativePositionalEncoding(length, key_depth // num_heads)
        self._value_rpe = RelativePositionalEncoding(length, value_depth // num_heads)
        self._batch_norm_qkv = get_norm(norm, 2 * key_depth + value_depth, dim=1)
        self._batch_norm_similarity = get_norm(norm, 3 * num_heads, dim=2)
        self._batch_norm_retrieved_output = get_norm(norm, 2 * value_depth, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, length = x.shape
        if length != self.length:
            raise ValueError(
                f"axial attention was built for length {self.length} (the model's image_size) "
                f"but got an input of length {length}"
            )
        h = self.num_heads
        qkv = self._batch_norm_qkv(self.qkv_transform(x))
        q, k, v = torch.split(qkv, [self.key_depth, self.key_depth, self.value_depth], dim=1)
        # [B', h*d, L] -> [B', h, d, L]
        q = q.reshape(b, h, -1, length)
        k = k.reshape(b, h, -1, length)
        v = v.reshape(b, h, -1, length)

        r_q = self._query_rpe().to(q.dtype)  # [L, L, dk]
        r_k = self._key_rpe().to(q.dtype)
        r_v = self._value_rpe().to(q.dtype)  # [L, L, dv]
        # Three [B', h, L(query), L(key)] logits: q_l·k_m, q_l·r_q[l,m], k_m·r_k[l,m].
        content = torch.einsum("bhdl,bhdm->bhlm", q, k)
        query_pos = torch.einsum("bhdl,lmd->bhlm", q, r_q)
        key_pos = torch.einsum("bhdm,lmd->bhlm", k, r_k)
        # Stack type-major: [B', 3h, L, L] -> one BN(3h) -> [B', 3, h, L, L] -> sum over type.
        logits = torch.cat([content, query_pos, key_pos], dim=1)
        logits = self._batch_norm_similarity(logits).reshape(b, 3, h, length, length).sum(1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            weights = F.softmax(logits.float(), dim=-1)
        weights = weights.to(v.dtype)
        # Retrieve [B', h, dv, L(query)] from values and from the value position table.
        retrieved = torch.einsum("bhlm,bhdm->bhdl", weights, v)
        retrieved_pos = torch.einsum("bhlm,lmd->bhdl", weights, r_v)
        # [B', 2h, dv, L] -> [B', 2*value_depth, L] (type, head, depth) -> BN -> sum over type.
        out = torch.cat([retrieved, retrieved_pos], dim=1).reshape(b, 2 * self.value_depth, length)
        out = self._batch_norm_retrieved_output(out).reshape(b, 2, self.value_depth, length).sum(1)
        return out


class AxialAttention2d(nn.Module):
    """Height-axis then width-axis attention (spec §1.2): ``[B, D_in, H, W] -> [B, 2f, H, W]``.

    Args:
        in_channels: D_in.
        shape: (H, W) of the feature map the layer is built for.
        filters: f; key depth ``key_expansion·f``, value depth ``value_expansion·f``.
        num_heads: heads per axis (8).
        key_expansion / value_expansion: 1 and 2 in kMaX.
        norm: batch-norm kind.
    """

    def __init__(
        self,
        in_channels: int,
        shape: Sequence[int],
        filters: int,
        *,
        num_heads: int = 8,
        key_expansion: float = 1.0,
        value_expansion: float = 2.0,
        norm: str = "BN",
    ) -> None:
        super().__init__()
        key_depth = int(round(filters * key_expansion))
        self.value_depth = int(round(filters * value_expansion))
        self.shape = (int(shape[0]), int(shape[1]))
        self._height_axis = AxialAttention1d(
            in_channels, self.shape[0], key_depth=key_depth, value_depth=self.value_depth,
            num_heads=num_heads, norm=norm)
        self._width_axis = AxialAttention1d(
            self.value_depth, self.shape[1], key_depth=key_depth, value_depth=self.value_depth,
            num_heads=num_heads, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        if (height, width) != self.shape:
            raise ValueError(
                f"axial attention was built for a {self.shape[0]}x{self.shape[1]} feature map "
                f"(the model's image_size) but got {height}x{width}"
            )
        # [B, C, H, W] -> [B, W, C, H] -> [B*W, C, H]: attend along H within each column.
        x = x.permute(0, 3, 1, 2).reshape(b * width, c, height)
        x = self._height_axis(x)
        # [B*W, V, H] -> [B, W, V, H] -> [B, H, V, W] -> [B*H, V, W]: attend along W within each row.
        x = x.reshape(b, width, self.value_depth, height).permute(0, 3, 2, 1)
        x = x.reshape(b * height, self.value_depth, width)
        x = self._width_axis(x)
        # [B*H, V, W] -> [B, H, V, W] -> [B, V, H, W]
        return x.reshape(b, height, self.value_depth, width).permute(0, 2, 1, 3).contiguous()


__all__ = ["MAX_SPAN", "AxialAttention1d", "AxialAttention2d", "RelativePositionalEncoding"]
