"""Multi-head self-attention among the queries (kMaX spec §1.3 step 5; MaX-DeepLab's too).

Batch-normalised similarities without 1/sqrt(d) scaling, as deeplab2 and bytedance build it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.layers.norm import get_norm


class QuerySelfAttention(nn.Module):
    """Multi-head attention among queries (spec §1.3 step 5; no 1/√d scaling).

    Logits q·k ``[B, heads, N, N]`` go through a BN over the heads, a softmax over keys
    in fp32, retrieve the values, then BN(value_dim) and GELU. Inputs q, k
    ``[B, heads, dk, N]`` and v ``[B, heads, dv, N]``; output ``[B, heads·dv, N]``.

    Args:
        value_dim: heads · dv (256).
        num_heads: heads (8).
        norm: batch-norm kind.
    """

    def __init__(self, value_dim: int, num_heads: int, *, norm: str = "BN") -> None:
        super().__init__()
        self._batch_norm_similarity = get_norm(norm, num_heads, dim=2)
        self._batch_norm_retrieved_value = get_norm(norm, value_dim, dim=1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, heads, dv, n = v.shape
        logits = self._batch_norm_similarity(torch.einsum("bhdl,bhdm->bhlm", q, k))
        with torch.autocast(device_type=q.device.type, enabled=False):
            weights = F.softmax(logits.float(), dim=-1)
        # [B, h, L, M] x [B, h, dv, M] -> [B, h, dv, L] -> [B, h*dv, L]
        out = torch.einsum("bhlm,bhdm->bhdl", weights.to(v.dtype), v).reshape(b, heads * dv, n)
        return F.gelu(self._batch_norm_retrieved_value(out))


__all__ = ["QuerySelfAttention"]
