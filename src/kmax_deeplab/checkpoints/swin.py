"""Official Swin Transformer checkpoints <-> our Swin backbone state dict (mmdet layout).

Our :class:`~kmax_deeplab.modeling.backbones.swin.SwinTransformer` uses mmdet 2.x's names (the
layout of the released K-Net Swin-L ``.pth``). The official layout (microsoft/Swin-Transformer,
``{"model": state_dict}``, e.g. ``swin_large_patch4_window7_224_22k.pth``; also the downstream
Swin of Swin-Transformer-Semantic-Segmentation that mmseg K-Net's Swin configs build) maps to it
as mmdet's ``swin_converter`` (``mmdet/models/utils/ckpt_convert.py``) does:

==============================================  ====================================================
official                                        ours
==============================================  ====================================================
``patch_embed.proj.*``                          ``patch_embed.projection.*``
``patch_embed.norm.*``                          ``patch_embed.norm.*``
``layers.{i}.blocks.{j}.norm{1,2}.*``           ``stages.{i}.blocks.{j}.norm{1,2}.*``
``layers.{i}.blocks.{j}.attn.{qkv,proj}.*``     ``stages.{i}.blocks.{j}.attn.w_msa.{qkv,proj}.*``
``…attn.relative_position_bias_table``          ``…attn.w_msa.relative_position_bias_table``
``layers.{i}.blocks.{j}.mlp.fc1.*`` / ``fc2``   ``stages.{i}.blocks.{j}.ffn.layers.0.0.*`` / ``layers.1``
``layers.{i}.downsample.reduction.weight``      ``stages.{i}.downsample.reduction.weight`` (reordered)
``layers.{i}.downsample.norm.*``                ``stages.{i}.downsample.norm.*`` (reordered)
``norm{i}.*`` (downstream checkpoints only)     ``norm{i}.*``
==============================================  ====================================================

Patch merging: the official code concatenates the 2 × 2 neighbours as channel blocks
``[x(0,0) | x(1,0) | x(0,1) | x(1,1)]`` (index ``k * C + c``); ours (mmdet's ``nn.Unfold``) has
``c * 4 + 2 * dy + dx``. The reduction's input columns and the norm's entries are permuted
accordingly, exactly (a pure permutation both ways).

Dropped from an official file: ``relative_position_index`` and ``attn_mask`` buffers (derived
from the geometry), and with ``classifier=True`` the ImageNet ``head.*`` and the final ``norm.*``.
An ImageNet file has no ``norm{0..3}``: the importer leaves those at their initialisation
(LayerNorm 1 / 0), as mmdet does, and requires everything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from kmax_deeplab.checkpoints.detectron2 import to_numpy
from kmax_deeplab.checkpoints.safe_load import load_weights_file
from kmax_deeplab.checkpoints.table import (
    CheckpointMismatchError,
    Row,
    apply_rows,
    check_against_target,
    target_shapes,
)

__all__ = ["OFFICIAL_TO_OURS", "OURS_TO_OFFICIAL", "is_official_swin", "load_swin_imagenet", "official_to_ours",
           "ours_to_official", "relative_position_index_entries"]

_P = r"(?P<p>weight|bias)"
_BLK = r"(?P<i>\d)\.blocks\.(?P<j>\d+)"


def _official_reduction_to_ours(w: np.ndarray) -> np.ndarray:
    """``[2C, 4C]`` columns ``k * C + c`` (k: (0,0), (1,0), (0,1), (1,1)) -> ``c * 4 + (2 dy + dx)``."""
    out_c, in_c = w.shape
    return w.reshape(out_c, 4, in_c // 4)[:, [0, 2, 1, 3], :].transpose(0, 2, 1).reshape(out_c, in_c)


def _ours_reduction_to_official(w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_official_reduction_to_ours`."""
    out_c, in_c = w.shape
    return w.reshape(out_c, in_c // 4, 4).transpose(0, 2, 1)[:, [0, 2, 1, 3], :].reshape(out_c, in_c)


def _official_norm_to_ours(v: np.ndarray) -> np.ndarray:
    """``[4C]`` entries in the official block order -> the Unfold order."""
    return v.reshape(4, -1)[[0, 2, 1, 3], :].T.reshape(-1)


def _ours_norm_to_official(v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_official_norm_to_ours`."""
    return v.reshape(-1, 4).T[[0, 2, 1, 3], :].reshape(-1)


#: official -> ours (backbone names, no prefix). The first matching row wins.
OFFICIAL_TO_OURS = (
    Row(rf"patch_embed\.proj\.{_P}", "patch_embed.projection.{p}"),
    Row(rf"patch_embed\.norm\.{_P}", "patch_embed.norm.{p}"),
    Row(rf"layers\.{_BLK}\.(?P<n>norm[12])\.{_P}", "stages.{i}.blocks.{j}.{n}.{p}"),
    Row(rf"layers\.{_BLK}\.attn\.relative_position_bias_table",
        "stages.{i}.blocks.{j}.attn.w_msa.relative_position_bias_table"),
    Row(rf"layers\.{_BLK}\.attn\.(?P<m>qkv|proj)\.{_P}", "stages.{i}.blocks.{j}.attn.w_msa.{m}.{p}"),
    Row(rf"layers\.{_BLK}\.mlp\.fc1\.{_P}", "stages.{i}.blocks.{j}.ffn.layers.0.0.{p}"),
    Row(rf"layers\.{_BLK}\.mlp\.fc2\.{_P}", "stages.{i}.blocks.{j}.ffn.layers.1.{p}"),
    Row(r"layers\.(?P<i>\d)\.downsample\.reduction\.weight", "stages.{i}.downsample.reduction.weight",
        _official_reduction_to_ours),
    Row(rf"layers\.(?P<i>\d)\.downsample\.norm\.{_P}", "stages.{i}.downsample.norm.{p}", _official_norm_to_ours),
    Row(rf"norm(?P<i>[0-3])\.{_P}", "norm{i}.{p}"),
)

#: ours -> official: the inverse of :data:`OFFICIAL_TO_OURS`.
OURS_TO_OFFICIAL = (
    Row(rf"patch_embed\.projection\.{_P}", "patch_embed.proj.{p}"),
    Row(rf"patch_embed\.norm\.{_P}", "patch_embed.norm.{p}"),
    Row(rf"stages\.{_BLK}\.(?P<n>norm[12])\.{_P}", "layers.{i}.blocks.{j}.{n}.{p}"),
    Row(rf"stages\.{_BLK}\.attn\.w_msa\.relative_position_bias_table",
        "layers.{i}.blocks.{j}.attn.relative_position_bias_table"),
    Row(rf"stages\.{_BLK}\.attn\.w_msa\.(?P<m>qkv|proj)\.{_P}", "layers.{i}.blocks.{j}.attn.{m}.{p}"),
    Row(rf"stages\.{_BLK}\.ffn\.layers\.0\.0\.{_P}", "layers.{i}.blocks.{j}.mlp.fc1.{p}"),
    Row(rf"stages\.{_BLK}\.ffn\.layers\.1\.{_P}", "layers.{i}.blocks.{j}.mlp.fc2.{p}"),
    Row(r"stages\.(?P<i>\d)\.downsample\.reduction\.weight", "layers.{i}.downsample.reduction.weight",
        _ours_reduction_to_official),
    Row(rf"stages\.(?P<i>\d)\.downsample\.norm\.{_P}", "layers.{i}.downsample.norm.{p}", _ours_norm_to_official),
    Row(rf"norm(?P<i>[0-3])\.{_P}", "norm{i}.{p}"),
)

#: Buffers derived from the geometry, in either layout.
DERIVED = (r".*\.relative_position_index", r".*\.attn_mask")
#: The ImageNet classifier and its final norm (official classification checkpoints).
CLASSIFIER = (r"head\..*", r"norm\.(?:weight|bias)")


def is_official_swin(names) -> bool:
    """Whether key names are in the official Swin layout (``layers.0.blocks.0.attn.qkv.weight``)."""
    return any(n.startswith("layers.") and ".blocks." in n and ".attn.qkv." in n for n in names)


def _strip(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        for pre in ("module.", "backbone."):
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def official_to_ours(state: Mapping[str, np.ndarray | torch.Tensor], target: torch.nn.Module | Mapping[str, object],
                     *, classifier: bool = True, strict: bool = True,
                     source: str = "official Swin checkpoint") -> dict[str, torch.Tensor]:
    """Convert an official-layout Swin state dict to our backbone names, checked against ``target``.

    Args:
        state: official name -> tensor (the ``"model"`` entry; ``module.``/``backbone.`` prefixes
            are removed).
        target: our Swin backbone, its state dict or name -> shape.
        classifier: the file is an ImageNet classifier: ``head.*`` and the final ``norm.*`` are
            dropped, and our ``norm{0..3}`` may be absent (they keep the target's values: the
            caller loads with those left out, see :func:`load_swin_imagenet`).
        strict: every other entry used and every other target entry produced, shapes equal.

    Returns:
        our name -> tensor (without ``norm{i}`` when the file has none).

    Raises:
        CheckpointMismatchError: not the official layout, leftovers or shape mismatches (a Swin-T
            file into a Swin-L backbone names the first mismatching shapes).
    """
    arrays = _strip(to_numpy(state))
    if not is_official_swin(arrays):
        raise CheckpointMismatchError(f"{source} is not an official Swin checkpoint (no layers.0.blocks.0.attn.qkv; "
                                      f"first keys: {sorted(arrays)[:6]})")
    ignored = DERIVED + (CLASSIFIER if classifier else ())
    converted, origin, unmatched = apply_rows(arrays, OFFICIAL_TO_OURS, ignored=ignored)
    shapes = target_shapes(target)
    if classifier and not any(k.startswith("norm") and k[4:5].isdigit() for k in converted):
        shapes = {k: v for k, v in shapes.items() if not (k.startswith("norm") and k[4:5].isdigit())}
    return check_against_target(converted, shapes, source=source, unmatched=unmatched, origin=origin, strict=strict)


def ours_to_official(state: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """Our Swin backbone state dict (no prefix) -> official names (downstream layout, with ``norm{i}``).

    Raises:
        CheckpointMismatchError: a key no row converts (not our Swin state dict).
    """
    converted, _, unmatched = apply_rows(to_numpy(state), OURS_TO_OFFICIAL)
    if unmatched:
        raise CheckpointMismatchError(f"cannot export to the official Swin layout: {len(unmatched)} keys have "
                                      f"no official name: {unmatched[:20]}")
    return converted


def relative_position_index_entries(state: Mapping[str, object], prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``…attn.w_msa.relative_position_index`` buffers mmdet stores, for each block in ``state``.

    Args:
        state: our (mmdet-layout) names; the window is read off each ``relative_position_bias_table``
            (``[(2w-1)^2, heads]``).
        prefix: only keys starting with it (e.g. ``"backbone."``).

    Returns:
        name -> int64 ``[w*w, w*w]`` (:func:`~kmax_deeplab.modeling.backbones.swin.relative_position_index`).
    """
    from kmax_deeplab.modeling.backbones.swin import relative_position_index

    out = {}
    suffix = ".attn.w_msa.relative_position_bias_table"
    for k, v in state.items():
        if k.startswith(prefix) and k.endswith(suffix):
            side = int(round((int(v.shape[0]) ** 0.5 + 1) / 2))
            out[k[: -len("relative_position_bias_table")] + "relative_position_index"] = relative_position_index(side)
    return out


def load_swin_imagenet(path: str | Path, backbone: torch.nn.Module, *, strict: bool = True) -> dict[str, torch.Tensor]:
    """Read an official Swin ImageNet checkpoint safely and load it into our ``backbone``.

    ``norm{0..3}`` keep their initialisation when the file has none (classification files).

    Returns:
        The converted state dict (the entries loaded).

    Raises:
        CheckpointMismatchError: see :func:`official_to_ours`.
    """
    sd = official_to_ours(load_weights_file(path), backbone, strict=strict, source=str(path))
    missing, unexpected = backbone.load_state_dict(sd, strict=False)
    left = [k for k in missing if not (k.startswith("norm") and k[4:5].isdigit())]
    if strict and (left or unexpected):  # pragma: no cover - official_to_ours already checked
        raise CheckpointMismatchError(f"{path}: missing {left[:10]}, unexpected {unexpected[:10]}")
    return sd
