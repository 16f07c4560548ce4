"""Position-sensitive axial attention (Axial-DeepLab; spec §1.2, §5.1).

One axis: a 1×1 conv (no bias) and BN give q (key depth), k (key depth) and v (value
depth); three logits per head, q·k, q·r_q and k·r_k, with r looked up from learned
relative-position tables (2·255−1 = 509 rows, offset = key − query + 254), are stacked
(type-major, then head) into one BN of 3·heads channels and summed, with no 1/√d
scaling; softmax over keys in fp32; the weights retrieve v and a value position table,
the two results are stacked (type, head, depth) into one BN of 2·value_depth channels
and summed. The 2-D layer runs the height axis (over columns) and then the width axis.

Implementation (issue #4; same numbers up to fp32 rounding): the qkv projection runs once
per axis on the whole map (:meth:`AxialAttention1d.project`), the attention on strided
``[B, heads, N, d, L]`` views (:meth:`AxialAttention1d.attend`), and in eval mode the two
stacked BNs are folded into q, k, v as fixed affines (:func:`frozen_affine`).

Parameter names match the bytedance checkpoint: ``qkv_transform.conv.weight``,
``_{query,key,value}_rpe._embeddings.weight``, ``_batch_norm_{qkv,similarity,retrieved_output}``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct, trunc_normal_
from kmax_deeplab.modeling.layers.norm import frozen_affine, get_norm

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
    :class:`AxialAttention2d` calls :meth:`project` on the whole map and :meth:`attend`
    on views, so the per-column ``[B·W, D_in, H]`` input is never built.

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

    def project(self, x: Tensor) -> Tensor:
        """The qkv 1×1 projection and its BN over any spatial layout.

        Args:
            x: ``[B, D_in, *S]`` (S = (L,) for one sequence per batch row, or (H, W) for a
                whole feature map, which then serves both the rows and the columns).

        Returns:
            ``[B, 2·key_depth + value_depth, *S]``: q, k and v channels (BN-normalised).
        """
        b, c = x.shape[:2]
        weight = self.qkv_transform.conv.weight[:, :, 0]  # [O, D_in]
        # [B, O, D_in] x [B, D_in, S] -> [B, O, S]: one GEMM instead of a 1-D conv per column;
        # the BN over [B, O, S] sees exactly the positions it saw over [B*W, O, H].
        qkv = torch.bmm(weight.unsqueeze(0).expand(b, -1, -1), x.reshape(b, c, -1))
        return self._batch_norm_qkv(qkv).reshape(b, -1, *x.shape[2:])

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention along the last axis of N independent sequences, given projected q, k, v.

        Args:
            q, k: ``[B, heads, N, key_depth/heads, L]`` (any strides).
            v: ``[B, heads, N, value_depth/heads, L]``.

        Returns:
            ``[B, heads, N, value_depth/heads, L]`` in v's dtype (the softmax runs in fp32).

        In eval mode the logit BN and the output BN are fixed per-channel affine maps: their
        scales are folded into q, k and v (per head / channel) and their shifts added once,
        so the stacked ``[.., 3h, L, L]`` and ``[.., 2·value_depth, L]`` tensors are never
        built. In training mode they run as modules on the stacked terms (batch statistics
        and running-statistic updates exactly as a plain stack + BN).
        """
        b, h, n, _, length = q.shape
        dv = v.shape[-2]
        r_q = self._query_rpe().to(q.dtype)  # [L(query), L(key), dk]
        r_k = self._key_rpe().to(q.dtype)
        r_v = self._value_rpe().to(v.dtype)  # [L, L, dv]
        sim = frozen_affine(self._batch_norm_similarity, 3 * h, q)
        out_affine = frozen_affine(self._batch_norm_retrieved_output, 2 * self.value_depth, q)

        q_c = q_p = q
        k_p = k
        if sim is not None:
            # [3h] -> [3, h, 1, 1, 1]: per-head scales of the three logit types
            scale = sim[0].reshape(3, h, 1, 1, 1).to(q.dtype)
            q_c, q_p, k_p = q * scale[0], q * scale[1], k * scale[2]
        # Three [B, h, N, L(query), L(key)] logits: q_l·k_m, q_l·r_q[l,m], k_m·r_k[l,m].
        content = torch.einsum("bhndl,bhndm->bhnlm", q_c, k)
        query_pos = torch.einsum("bhndl,lmd->bhnlm", q_p, r_q)
        key_pos = torch.einsum("bhndm,lmd->bhnlm", k_p, r_k)
        if sim is not None:
            shift = sim[1].reshape(3, h).sum(0).reshape(h, 1, 1, 1).to(content.dtype)
            logits = content + query_pos + key_pos + shift
        else:
            # Stack type-major: [B, 3h, N*L, L] -> one BN(3h) -> [B, 3, h, N, L, L] -> sum over type.
            stacked = torch.stack([content, query_pos, key_pos], dim=1).reshape(b, 3 * h, n * length, length)
            logits = self._batch_norm_similarity(stacked).reshape(b, 3, h, n, length, length).sum(1)
        with torch.autocast(device_type=q.device.type, enabled=False):
            weights = F.softmax(logits.float(), dim=-1)
        weights = weights.to(v.dtype)

        if out_affine is not None:
            # [2*value_depth] (type, head, depth) -> [2, h, 1, dv, 1]
            scale = out_affine[0].reshape(2, h, 1, dv, 1).to(v.dtype)
            shift = out_affine[1].reshape(2, h, 1, dv, 1).sum(0).to(v.dtype)
            # v scaled per channel before retrieval = BN scale applied after it
            retrieved = torch.einsum("bhnlm,bhndm->bhndl", weights, v * scale[0])
            retrieved_pos = torch.einsum("bhnlm,lmd->bhndl", weights, r_v)
            return torch.addcmul(retrieved + shift, retrieved_pos, scale[1])
        # Retrieve [B, h, N, dv, L(query)] from values and from the value position table.
        retrieved = torch.einsum("bhnlm,bhndm->bhndl", weights, v)
        retrieved_pos = torch.einsum("bhnlm,lmd->bhndl", weights, r_v)
        # [B, 2, h, N, dv, L] -> [B, 2, h, dv, N, L] -> [B, 2*value_depth (type, head, depth), N*L] -> BN
        stacked = torch.stack([retrieved, retrieved_pos], dim=1).transpose(3, 4)
        stacked = self._batch_norm_retrieved_output(stacked.reshape(b, 2 * self.value_depth, n * length))
        # -> [B, 2, h, dv, N, L] -> sum over type -> [B, h, N, dv, L]
        return stacked.reshape(b, 2, h, dv, n, length).sum(1).transpose(2, 3)

    def split_heads(self, qkv: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``[B, O, *S] -> q, k [B, heads, dk, *S], v [B, heads, dv, *S]`` (views)."""
        q, k, v = torch.split(qkv, [self.key_depth, self.key_depth, self.value_depth], dim=1)
        # [B, h*d, *S] -> [B, h, d, *S]
        return tuple(t.unflatten(1, (self.num_heads, -1)) for t in (q, k, v))  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        b, _, length = x.shape
        if length != self.length:
            raise ValueError(
                f"axial attention was built for length {self.length} (the model's image_size) "
                f"but got an input of length {length}"
            )
        # [B', h, d, L] -> [B', h, 1, d, L]: one sequence per batch row
        q, k, v = (t.unsqueeze(2) for t in self.split_heads(self.project(x)))
        # [B', h, 1, dv, L] -> [B', value_depth, L]
        return self.attend(q, k, v).reshape(b, self.value_depth, length)


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
        # Height axis: project the whole map once, then attend along H within each column.
        q, k, v = self._height_axis.split_heads(self._height_axis.project(x))  # [B, h, d, H, W]
        # [B, h, d, H, W] -> [B, h, W, d, H] (views)
        q, k, v = (t.permute(0, 1, 4, 2, 3) for t in (q, k, v))
        y = self._height_axis.attend(q, k, v)  # [B, h, W, dv, H]
        # [B, h, W, dv, H] -> [B, h, dv, H, W] -> [B, V, H, W]
        y = y.permute(0, 1, 3, 4, 2).reshape(b, self.value_depth, height, width)
        # Width axis on the height output: attend along W within each row.
        q, k, v = self._width_axis.split_heads(self._width_axis.project(y))  # [B, h, d, H, W]
        # [B, h, d, H, W] -> [B, h, H, d, W] (views)
        q, k, v = (t.permute(0, 1, 3, 2, 4) for t in (q, k, v))
        y = self._width_axis.attend(q, k, v)  # [B, h, H, dv, W]
        # [B, h, H, dv, W] -> [B, h, dv, H, W] -> [B, V, H, W]
        return y.permute(0, 1, 3, 2, 4).reshape(b, self.value_depth, height, width)


__all__ = ["MAX_SPAN", "AxialAttention1d", "AxialAttention2d", "RelativePositionalEncoding"]
