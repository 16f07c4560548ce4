"""kMaX transformer decoder: k-means cross-attention layers over N cluster centres (spec §1.3).

Six layers (2 + 2 + 2) read the pixel-decoder outputs at strides 32, 16 and 8. Each
layer predicts masks from its pre-update query features (its own :class:`KMaXPredictor`),
assigns every pixel to the query with the largest mask logit (a detached one-hot, the
k-means E-step), adds the BN-normalised, unnormalised per-cluster sum of pixel values to
the queries (M-step), then runs query self-attention and an FFN. After the last layer
class and mask embeddings are projected and the final predictor runs on the stride-4
panoptic feature.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.heads.predictor import KMaXPredictor
from kmax_deeplab.modeling.heads.query_attention import QuerySelfAttention
from kmax_deeplab.modeling.layers.conv_norm import ConvNormAct, trunc_normal_
from kmax_deeplab.modeling.layers.drop_path import DropPath
from kmax_deeplab.modeling.layers.norm import get_norm
from kmax_deeplab.modeling.outputs import MaskTransformerOutput


@torch.no_grad()
def kmeans_assignment(mask_logits: Tensor) -> Tensor:
    """Hard cluster assignment: one-hot of the argmax over the N queries (spec §1.3 step 3, §7.3).

    Args:
        mask_logits: ``[B, N, h, w]`` float mask logits.

    Returns:
        ``[B, N, h·w]`` float32 one-hot (each pixel column sums to 1), without gradient.
    """
    logits = mask_logits.detach().flatten(2)  # [B, N, h*w]
    index = logits.argmax(dim=1, keepdim=True)  # [B, 1, h*w]
    return torch.zeros_like(logits, dtype=torch.float32).scatter_(1, index, 1.0)


def kmeans_update(assignment: Tensor, pixel_value: Tensor) -> Tensor:
    """Per-cluster *sum* of pixel values (not a mean; a BN follows), computed in fp32.

    Args:
        assignment: ``[B, N, h·w]`` one-hot assignment.
        pixel_value: ``[B, D, h·w]`` pixel values.

    Returns:
        ``[B, D, N]`` float32 cluster sums.
    """
    with torch.autocast(device_type=pixel_value.device.type, enabled=False):
        # sum over pixels m: [B, N, M] x [B, D, M] -> [B, D, N]
        return torch.einsum("bnm,bdm->bdn", assignment.float(), pixel_value.float())


class KMaXTransformerLayer(nn.Module):
    """One kMaX layer: k-means cross-attention, query self-attention, FFN (spec §1.3).

    Args:
        pixel_channels: Cp of the pixel input ``[B, Cp, h, w]``.
        num_classes: C (the layer's predictor outputs C+1 logits).
        hidden_dim: query width and bottleneck width (256).
        key_dim: total self-attention key depth (128).
        value_dim: total value depth of the k-means update and self-attention (256).
        ffn_dim: FFN width (2048).
        num_heads: self-attention heads (8).
        pixel_feature_dim: D of the predictor's pixel feature (128).
        drop_path: drop-path rate of the k-means, attention and FFN branches.
        norm: batch-norm kind.
    """

    def __init__(
        self,
        pixel_channels: int,
        num_classes: int,
        *,
        hidden_dim: int = 256,
        key_dim: int = 128,
        value_dim: int = 256,
        ffn_dim: int = 2048,
        num_heads: int = 8,
        pixel_feature_dim: int = 128,
        drop_path: float = 0.0,
        norm: str = "BN",
    ) -> None:
        super().__init__()
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"key_dim {key_dim} and value_dim {value_dim} must divide by num_heads {num_heads}")
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.num_heads = num_heads
        init_std = hidden_dim ** -0.5
        self._query_conv1_bn_act = ConvNormAct(hidden_dim, hidden_dim, 1, dim=1, norm=norm, act="gelu")
        self._pixel_conv1_bn_act = ConvNormAct(pixel_channels, hidden_dim, 1, norm=norm, act="gelu")
        self._query_qkv_conv_bn = ConvNormAct(hidden_dim, 2 * key_dim + value_dim, 1, dim=1, norm=norm,
                                              init_std=init_std)
        self._pixel_v_conv_bn = ConvNormAct(hidden_dim, value_dim, 1, norm=norm, init_std=init_std)
        self._query_self_attention = QuerySelfAttention(value_dim, num_heads, norm=norm)
        self._query_conv3_bn = ConvNormAct(value_dim, hidden_dim, 1, dim=1, norm=norm, norm_init_zero=True)
        self._query_ffn_conv1_bn_act = ConvNormAct(hidden_dim, ffn_dim, 1, dim=1, norm=norm, act="gelu")
        self._query_ffn_conv2_bn = ConvNormAct(ffn_dim, hidden_dim, 1, dim=1, norm=norm, norm_init_zero=True)
        self._predictor = KMaXPredictor(hidden_dim, num_classes, query_dim=hidden_dim, hidden_dim=hidden_dim,
                                        pixel_feature_dim=pixel_feature_dim, norm=norm)
        self._kmeans_query_batch_norm_retrieved_value = get_norm(norm, value_dim, dim=1)
        self._kmeans_query_conv3_bn = ConvNormAct(value_dim, hidden_dim, 1, dim=1, norm=norm, norm_init_zero=True)
        self.drop_path_kmeans = DropPath(drop_path)
        self.drop_path_attn = DropPath(drop_path)
        self.drop_path_ffn = DropPath(drop_path)

    def forward(self, pixel_feature: Tensor, query: Tensor) -> tuple[Tensor, dict]:
        """Update the queries.

        Args:
            pixel_feature: ``[B, Cp, h, w]`` pixel-decoder output.
            query: ``[B, hidden_dim, N]`` cluster centres.

        Returns:
            (updated ``[B, hidden_dim, N]`` queries, the layer predictor's dict with
            ``class_logits [B, N, C+1]``, ``mask_logits [B, N, h, w]``, ``pixel_feature [B, D, h, w]``).
        """
        b, _, n = query.shape
        pixel_space = self._pixel_conv1_bn_act(F.gelu(pixel_feature))  # [B, hidden, h, w]
        query_space = self._query_conv1_bn_act(query)  # [B, hidden, N]
        pixel_value = self._pixel_v_conv_bn(pixel_space).flatten(2)  # [B, value_dim, h*w]

        # k-means E-step on the pre-update queries, M-step as an unnormalised sum.
        prediction = self._predictor(query_space, query_space, pixel_space)
        assignment = kmeans_assignment(prediction["mask_logits"])
        update = kmeans_update(assignment, pixel_value)  # [B, value_dim, N] fp32
        update = self._kmeans_query_conv3_bn(self._kmeans_query_batch_norm_retrieved_value(update))
        query = query + self.drop_path_kmeans(update)

        # Self-attention on the pre-update query_space (deeplab2 #157).
        qkv = self._query_qkv_conv_bn(query_space)
        q, k, v = torch.split(qkv, [self.key_dim, self.key_dim, self.value_dim], dim=1)
        # [B, h*d, N] -> [B, h, d, N]
        q = q.reshape(b, self.num_heads, -1, n)
        k = k.reshape(b, self.num_heads, -1, n)
        v = v.reshape(b, self.num_heads, -1, n)
        attn = self._query_conv3_bn(self._query_self_attention(q, k, v))
        query = F.gelu(query + self.drop_path_attn(attn))

        ffn = self._query_ffn_conv2_bn(self._query_ffn_conv1_bn_act(query))
        query = F.gelu(query + self.drop_path_ffn(ffn))
        return query, prediction


class KMaXTransformerDecoder(nn.Module):
    """The kMaX decoder: layers, final projections and predictor, optional aux semantic head.

    Stored as ``predictor.`` in the model (the bytedance ``sem_seg_head.predictor.``).

    Args:
        pixel_channels: channels of the stride-32/16/8 decoder outputs (2048, 1024, 512).
        panoptic_channels: channels of the stride-4 panoptic feature (256).
        num_classes: C.
        num_queries: N.
        layers_per_stage: kMaX layers per stride 32/16/8 (2, 2, 2).
        hidden_dim / key_dim / value_dim / ffn_dim / num_heads / pixel_feature_dim:
            see :class:`KMaXTransformerLayer`.
        drop_path: decoder drop-path rate.
        norm: batch-norm kind.
        semantic_head: the auxiliary semantic predictor (``_auxiliary_semantic_predictor``),
            a module called as ``head(res5, res3, res2)`` and run in training mode only, or None.

    Raises:
        ValueError: ``pixel_channels`` and ``layers_per_stage`` lengths differ.
    """

    def __init__(
        self,
        pixel_channels: Sequence[int],
        panoptic_channels: int,
        num_classes: int,
        num_queries: int,
        *,
        layers_per_stage: Sequence[int] = (2, 2, 2),
        hidden_dim: int = 256,
        key_dim: int = 128,
        value_dim: int = 256,
        ffn_dim: int = 2048,
        num_heads: int = 8,
        pixel_feature_dim: int = 128,
        drop_path: float = 0.0,
        norm: str = "BN",
        semantic_head: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        if len(pixel_channels) != len(layers_per_stage):
            raise ValueError(
                f"pixel_channels {list(pixel_channels)} and layers_per_stage {list(layers_per_stage)} differ in length")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.layers_per_stage = tuple(layers_per_stage)
        self._kmax_transformer_layers = nn.ModuleList()
        for channels, count in zip(pixel_channels, layers_per_stage):
            for _ in range(count):
                self._kmax_transformer_layers.append(KMaXTransformerLayer(
                    channels, num_classes, hidden_dim=hidden_dim, key_dim=key_dim, value_dim=value_dim,
                    ffn_dim=ffn_dim, num_heads=num_heads, pixel_feature_dim=pixel_feature_dim,
                    drop_path=drop_path, norm=norm))
        # [hidden, N]: the transposed nn.Embedding layout of the bytedance checkpoint.
        self._cluster_centers = nn.Embedding(hidden_dim, num_queries)
        trunc_normal_(self._cluster_centers.weight, 1.0)
        self._class_embedding_projection = ConvNormAct(hidden_dim, hidden_dim, 1, dim=1, norm=norm, act="gelu")
        self._mask_embedding_projection = ConvNormAct(hidden_dim, hidden_dim, 1, dim=1, norm=norm, act="gelu")
        self._predictor = KMaXPredictor(panoptic_channels, num_classes, query_dim=hidden_dim, hidden_dim=hidden_dim,
                                        pixel_feature_dim=pixel_feature_dim, norm=norm)
        if semantic_head is not None:
            self._auxiliary_semantic_predictor = semantic_head
        else:
            self._auxiliary_semantic_predictor = None

    def forward(
        self,
        multi_scale_features: Sequence[Tensor],
        panoptic_feature: Tensor,
        semantic_features: Optional[Sequence[Tensor]] = None,
    ) -> MaskTransformerOutput:
        """Run the layers and the final predictor.

        Args:
            multi_scale_features: ``[B, Cp_i, h_i, w_i]`` at strides 32, 16, 8.
            panoptic_feature: ``[B, Cp, h, w]`` stride-4 feature.
            semantic_features: raw backbone ``[res5, res3, res2]`` for the aux semantic head
                (used in training mode only).

        Returns:
            :class:`MaskTransformerOutput`; ``aux_outputs`` holds one dict per layer with
            masks and pixel features bilinearly resized (align_corners=True) to ``h×w``.
        """
        if len(multi_scale_features) != len(self.layers_per_stage):
            raise ValueError(
                f"transformer decoder expects {len(self.layers_per_stage)} pixel features, "
                f"got {len(multi_scale_features)}")
        batch = panoptic_feature.shape[0]
        # [hidden, N] -> [B, hidden, N]
        query = self._cluster_centers.weight.unsqueeze(0).expand(batch, -1, -1)
        layer_preds = []
        index = 0
        for feature, count in zip(multi_scale_features, self.layers_per_stage):
            for _ in range(count):
                query, pred = self._kmax_transformer_layers[index](feature, query)
                layer_preds.append(pred)
                index += 1

        class_embeddings = self._class_embedding_projection(query)
        mask_embeddings = self._mask_embedding_projection(query)
        final = self._predictor(mask_embeddings, class_embeddings, panoptic_feature)
        size = final["mask_logits"].shape[-2:]
        aux: List[dict] = [
            {
                "pred_logits": p["class_logits"],
                "pred_masks": F.interpolate(p["mask_logits"], size=size, mode="bilinear", align_corners=True),
                "pixel_feature": F.interpolate(p["pixel_feature"], size=size, mode="bilinear", align_corners=True),
            }
            for p in layer_preds
        ]
        out: MaskTransformerOutput = {
            "pred_logits": final["class_logits"],
            "pred_masks": final["mask_logits"],
            "pixel_feature": final["pixel_feature"],
            "aux_outputs": aux,
        }
        if self.training and self._auxiliary_semantic_predictor is not None:
            if semantic_features is None:
                raise ValueError("transformer decoder: training with an aux semantic head needs semantic_features")
            out["semantic_logits"] = self._auxiliary_semantic_predictor(*semantic_features)
        return out


__all__ = [
    "KMaXTransformerDecoder",
    "KMaXTransformerLayer",
    "QuerySelfAttention",
    "kmeans_assignment",
    "kmeans_update",
]
