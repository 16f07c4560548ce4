"""Swin Transformer backbones (Liu et al., ICCV 2021, "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows"), as the released K-Net Swin-L detector builds them.

The computation is that of the official code (microsoft/Swin-Transformer) in the form mmdet
2.x's ``SwinTransformer`` (``mmdet/models/backbones/swin.py``) gives it, which is what K-Net's
``configs/det/knet/knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py`` builds (``type=
'SwinTransformer'``, ``convert_weights=True``). Parameter names are therefore mmdet's, the
layout of the released K-Net Swin-L ``.pth``::

    patch_embed.projection.{weight,bias}, patch_embed.norm.{weight,bias}
    stages.{i}.blocks.{j}.norm1.*, stages.{i}.blocks.{j}.attn.w_msa.relative_position_bias_table,
    stages.{i}.blocks.{j}.attn.w_msa.{qkv,proj}.*, stages.{i}.blocks.{j}.norm2.*,
    stages.{i}.blocks.{j}.ffn.layers.0.0.*, stages.{i}.blocks.{j}.ffn.layers.1.*
    stages.{i}.downsample.norm.*, stages.{i}.downsample.reduction.weight      (i = 0..2)
    norm{i}.*                                                                (per output)

``relative_position_index`` is a derived, non-persistent buffer here (mmdet stores it; the
converters drop / re-create it). The official layout (``layers.{i}.blocks.{j}.attn.qkv``,
``mlp.fc1``, ``patch_embed.proj``) is converted by :mod:`kmax_deeplab.checkpoints.swin`; the
patch-merging channel order is mmdet's ``nn.Unfold`` order (the converter permutes it).

Geometry (both references): the image is zero-padded bottom/right to a multiple of the patch
size 4; each window attention zero-pads its map bottom/right to a multiple of the window size
7 and crops back; each patch merging zero-pads an odd side by one (bottom/right). So an
``H × W`` input gives ``ceil(H/4)``, then halves rounded up: exactly ``ceil(H / stride)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmax_deeplab.modeling.backbones.base import Backbone, FeatureSpec, check_feature_info
from kmax_deeplab.modeling.layers.drop_path import DropPath

__all__ = ["SWIN_SIZES", "ShiftWindowMSA", "SwinBlock", "SwinTransformer", "WindowMSA",
           "relative_position_index", "shifted_window_mask", "swin"]

#: name -> (embed_dim, depths, num_heads); window 7, patch 4, MLP ratio 4 for all.
SWIN_SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
#: LayerNorm eps of every Swin norm (torch / mmcv default).
SWIN_LN_EPS = 1e-5
#: Logit added to attention between tokens of different shifted-window regions (both references).
MASK_VALUE = -100.0


def relative_position_index(window: int) -> Tensor:
    """Index into the ``[(2w-1)^2, heads]`` bias table for every token pair of a ``w × w`` window.

    ``index[p, q] = (i_p - i_q + w - 1) * (2w - 1) + (j_p - j_q + w - 1)`` for tokens ``p, q``
    in raster order (official ``SwinTransformerBlock``; mmdet's ``double_step_seq`` gives the same).

    Returns:
        int64 ``[w*w, w*w]``.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # [N, N, 2]
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: Tensor, window: int) -> Tensor:
    """``[B, H, W, C]`` (H, W multiples of ``window``) -> ``[B * nW, window * window, C]``."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, window * window, C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int, device=None) -> Tensor:
    """Attention mask of the shifted windows on a padded ``h × w`` map (official / mmdet).

    The map is labelled in 3 × 3 regions (``[0, -window)``, ``[-window, -shift)``,
    ``[-shift, end)`` along each axis), then cyclically shifted by ``-shift`` and cut into
    windows; token pairs of different regions get :data:`MASK_VALUE`, the rest 0.

    Returns:
        float32 ``[nW, window*window, window*window]``, ``nW = (h / window) * (w / window)``.
    """
    img = torch.zeros((1, h, w, 1), device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            img[:, hs, ws, :] = label
            label += 1
    win = window_partition(img, window).squeeze(-1)  # [nW, N]
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


class WindowMSA(nn.Module):
    """Window multi-head self-attention with a relative position bias (W-MSA).

    ``softmax(q k^T / sqrt(d) + B[index] (+ mask)) v`` over the tokens of each window, then a
    projection; ``B`` is the learnt ``relative_position_bias_table`` ``[(2w-1)^2, heads]``.

    Args:
        dim: C, token channels.
        num_heads: heads (C must be divisible).
        window: window side w (7).
        qkv_bias: bias on the fused ``qkv`` Linear (True in every Swin config).
        attn_drop, proj_drop: dropout rates (0 in K-Net).

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int, window: int, *, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` ``[B * nW, N, C]`` (N = w*w), ``mask`` ``[nW, N, N]`` or None -> ``[B * nW, N, C]``."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # each [B*nW, heads, N, d]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


class ShiftWindowMSA(nn.Module):
    """(Shifted-)window attention on a token map, with the padding and drop path of mmdet.

    Pads ``[B, H, W, C]`` bottom/right with zeros to multiples of the window, rolls by
    ``-shift`` (shifted blocks), runs :class:`WindowMSA` per window with
    :func:`shifted_window_mask`, rolls back, crops to ``H × W``; the result goes through drop
    path (mmdet's ``ShiftWindowMSA.drop``).

    Args:
        dim, num_heads, window, qkv_bias, attn_drop, proj_drop: see :class:`WindowMSA`.
        shift: 0 (W-MSA) or ``window // 2`` (SW-MSA).
        drop_path: stochastic-depth rate of this branch.

    Raises:
        ValueError: ``shift`` outside ``[0, window)``.
    """

    def __init__(self, dim: int, num_heads: int, window: int, *, shift: int = 0, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"Swin shift must be in [0, {window}), got {shift}")
        self.window = window
        self.shift = shift
        self.w_msa = WindowMSA(dim, num_heads, window, qkv_bias=qkv_bias, attn_drop=attn_drop,
                               proj_drop=proj_drop)
        self.drop = DropPath(drop_path)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """``x`` ``[B, H*W, C]`` tokens of an ``H × W`` map -> ``[B, H*W, C]``."""
        b, n, c = x.shape
        h, w = hw
        if n != h * w:
            raise ValueError(f"Swin attention: {n} tokens for a {h}x{w} map")
        win = self.window
        x = x.view(b, h, w, c)
        pad_r, pad_b = -w % win, -h % win
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        mask = None
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, win, self.shift, device=x.device)
        y = self.w_msa(window_partition(x, win), mask=mask)
        y = window_reverse(y, win, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        y = y[:, :h, :w, :].reshape(b, h * w, c)
        return self.drop(y)


class SwinFFN(nn.Module):
    """The block MLP in mmcv ``FFN``'s layout: ``layers = [[Linear(C, 4C), GELU, Dropout], Linear(4C, C),
    Dropout]``; ``[..., C]`` -> ``[..., C]`` (the residual is added by :class:`SwinBlock`)."""

    def __init__(self, dim: int, hidden: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop)),
                                    nn.Linear(hidden, dim), nn.Dropout(drop))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SwinBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + drop_path(ffn(norm2(x)))`` (pre-norm Swin block).

    Args:
        dim, num_heads, window, qkv_bias: attention settings (:class:`WindowMSA`).
        shift: whether this block uses shifted windows (odd blocks of a stage).
        mlp_ratio: FFN hidden width / C (4).
        drop, attn_drop, drop_path: dropout rates and this block's stochastic depth.
    """

    def __init__(self, dim: int, num_heads: int, *, window: int = 7, shift: bool = False, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=SWIN_LN_EPS)
        self.attn = ShiftWindowMSA(dim, num_heads, window, shift=window // 2 if shift else 0, qkv_bias=qkv_bias,
                                   attn_drop=attn_drop, proj_drop=drop, drop_path=drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=SWIN_LN_EPS)
        self.ffn = SwinFFN(dim, int(mlp_ratio * dim), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """``[B, H*W, C]`` -> ``[B, H*W, C]``."""
        x = x + self.attn(self.norm1(x), hw)
        return x + self.drop_path(self.ffn(self.norm2(x)))


class PatchMerging(nn.Module):
    """2 × 2 patch merging: ``[B, H*W, C]`` -> ``[B, ceil(H/2)*ceil(W/2), 2C]``.

    An odd side is zero-padded bottom/right; each 2 × 2 patch becomes the ``4C`` vector in
    mmdet's ``nn.Unfold`` order (index ``c * 4 + 2 * dy + dx``), then LayerNorm and a bias-free
    ``reduction`` Linear. (The official code concatenates ``[x(0,0), x(1,0), x(0,1), x(1,1)]``
    channel blocks instead; :mod:`kmax_deeplab.checkpoints.swin` permutes between the two.)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=SWIN_LN_EPS)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """Returns the merged tokens and the new ``(H', W')``."""
        b, _, c = x.shape
        h, w = hw
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        # [B, H', dy, W', dx, C] -> [B, H', W', C, dy, dx]: the Unfold channel order.
        x = x.view(b, h2, 2, w2, 2, c).permute(0, 1, 3, 5, 2, 4).reshape(b, h2 * w2, 4 * c)
        return self.reduction(self.norm(x)), (h2, w2)


class PatchEmbed(nn.Module):
    """Zero-pad bottom/right to a multiple of ``patch``, ``projection`` conv patch × patch / patch,
    flatten, LayerNorm: ``[B, 3, H, W]`` -> tokens ``[B, h*w, C]`` and ``(h, w)``."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=SWIN_LN_EPS)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.patch, 0, -h % self.patch))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class SwinStage(nn.Module):
    """``depth`` :class:`SwinBlock` (even blocks W-MSA, odd blocks SW-MSA) and an optional
    :class:`PatchMerging` ``downsample`` after them (mmdet ``SwinBlockSequence``)."""

    def __init__(self, dim: int, depth: int, num_heads: int, *, window: int, mlp_ratio: float, qkv_bias: bool,
                 drop: float, attn_drop: float, drop_paths: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock(dim, num_heads, window=window, shift=j % 2 == 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      drop=drop, attn_drop=attn_drop, drop_path=drop_paths[j]) for j in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int], Tensor]:
        """Returns (tokens for the next stage, their size, this stage's output tokens ``[B, H*W, C]``)."""
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, hw, x
        down, down_hw = self.downsample(x, hw)
        return down, down_hw, x


class SwinTransformer(Backbone):
    """Swin Transformer trunk: outputs ``stem`` (the patch embedding) and ``res2..res5`` at
    strides 4, 4, 8, 16, 32 with ``C, C, 2C, 4C, 8C`` channels.

    ``res{i+2}`` is stage i's output through its own LayerNorm ``norm{i}`` when ``i`` is in
    ``out_indices`` (mmdet; all four in K-Net), else the raw stage output.

    Args:
        embed_dim: C (T 96, L 192).
        depths: blocks per stage (T (2, 2, 6, 2), L (2, 2, 18, 2)).
        num_heads: heads per stage (T (3, 6, 12, 24), L (6, 12, 24, 48)).
        window: window side (7).
        patch: patch size (4).
        mlp_ratio: FFN width / C (4).
        qkv_bias: bias on ``qkv`` (True).
        drop, attn_drop: dropout rates (0).
        drop_path: largest stochastic-depth rate; block k of K gets ``drop_path * k / (K - 1)``
            (``torch.linspace``; K-Net Swin-L 0.2, mmseg Swin-T 0.3, Swin-L 0.3 / 0.4).
        out_indices: stages whose output gets a ``norm{i}`` (subset of 0..3).
        frozen_stages: mmdet ``frozen_stages``: -1 freezes nothing; s >= 0 freezes the patch
            embedding and stages 0..s-1 with their ``norm{i}`` (no gradient, eval mode).
        in_channels: input channels (3).

    Raises:
        ValueError: not 4 stages, rates outside [0, 1), bad ``out_indices`` or ``frozen_stages``.
    """

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), *, window: int = 7, patch: int = 4,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.1, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 in_channels: int = 3) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin needs 4 stages, got depths {tuple(depths)}, num_heads {tuple(num_heads)}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"Swin drop_path must be in [0, 1), got {drop_path}")
        if not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f"Swin out_indices must be a subset of (0, 1, 2, 3), got {tuple(out_indices)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"Swin frozen_stages must be in [-1, 4], got {frozen_stages}")
        self.out_indices = tuple(sorted(set(out_indices)))
        self.frozen_stages = frozen_stages
        dims = [embed_dim * 2 ** i for i in range(4)]
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch)
        # float32 linspace on the CPU, as both references compute it.
        rates = torch.linspace(0, drop_path, sum(depths), device="cpu").tolist()
        self.drop_path_rates = tuple(rates)
        self.stages = nn.ModuleList()
        for i in range(4):
            start = sum(depths[:i])
            self.stages.append(SwinStage(dims[i], depths[i], num_heads[i], window=window, mlp_ratio=mlp_ratio,
                                         qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop,
                                         drop_paths=rates[start:start + depths[i]], downsample=i < 3))
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i], eps=SWIN_LN_EPS))
        self.apply(_init_weights)
        for m in self.modules():
            if isinstance(m, WindowMSA):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
        self.feature_info = check_feature_info(
            [FeatureSpec("stem", embed_dim, patch)]
            + [FeatureSpec(f"res{i + 2}", dims[i], patch * 2 ** i) for i in range(4)])
        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        """The patch embedding, stages 0..frozen_stages-1 and their output norms (mmdet ``_freeze_stages``)."""
        if self.frozen_stages < 0:
            return []
        mods: list[nn.Module] = [self.patch_embed]
        for i in range(self.frozen_stages):
            mods.append(self.stages[i])
            if i in self.out_indices:
                mods.append(getattr(self, f"norm{i}"))
        return mods

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "SwinTransformer":
        """``nn.Module.train``, then the frozen modules back to eval."""
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features of a normalised image batch.

        Args:
            x: ``[B, 3, H, W]`` float, already normalised (any H, W).

        Returns:
            ``"stem"``: the normed patch embedding; ``"res2".."res5"``: the stage outputs (normed
            by ``norm{i}`` for ``i`` in ``out_indices``); each ``[B, D, ceil(H/s), ceil(W/s)]``.

        Raises:
            ValueError: ``x`` is not ``[B, 3, H, W]`` floating point.
        """
        self._check_input(x)
        b = x.shape[0]
        tokens, hw = self.patch_embed(x)
        out = {"stem": tokens.transpose(1, 2).reshape(b, -1, *hw)}
        for i, stage in enumerate(self.stages):
            tokens, next_hw, y = stage(tokens, hw)
            if i in self.out_indices:
                y = getattr(self, f"norm{i}")(y)
            out[f"res{i + 2}"] = y.transpose(1, 2).reshape(b, -1, *hw)
            hw = next_hw
        return out


def _init_weights(module: nn.Module) -> None:
    """Swin init (official ``_init_weights`` / mmdet ``init_weights``): truncated normal std 0.02
    on Linear weights, zero biases, LayerNorm 1 / 0; the patch conv keeps PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def swin(size: str, *, drop_path: float = 0.2, window: int = 7, frozen_stages: int = -1) -> SwinTransformer:
    """Swin-T/S/B/L by ``size`` in ``"tiny"``, ``"small"``, ``"base"``, ``"large"`` (patch 4, MLP ratio 4).

    Raises:
        ValueError: unknown size.
    """
    if size not in SWIN_SIZES:
        raise ValueError(f"unknown Swin size {size!r}; expected one of {tuple(SWIN_SIZES)}")
    dim, depths, heads = SWIN_SIZES[size]
    return SwinTransformer(dim, depths, heads, window=window, drop_path=drop_path, frozen_stages=frozen_stages)
