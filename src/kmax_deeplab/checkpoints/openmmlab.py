"""Rename rows and file writing shared by the OpenMMLab K-Net converters (mmdet, mmseg) and the
ImageNet ResNet importer.

mmcv / torchvision ResNets name their blocks ``layer{s}.{b}.conv{k}`` / ``bn{k}`` /
``downsample.{0,1}`` (``s`` = 1..4); ours are ``res{s+1}.{b}.conv{k}`` / ``.conv{k}.norm`` /
``shortcut`` / ``shortcut.norm`` (:mod:`kmax_deeplab.modeling.backbones.resnet`). The K-Net update
stages are ``<head>.{i}.attention.attn`` / ``kernel_update_conv`` / ``feat_transform.conv`` /
``ffn.layers.{0.0,1}`` in both mmdet (``roi_head.mask_head``) and mmseg
(``decode_head.kernel_update_head``); ours are ``stages.{i}.attention`` / ``updator`` /
``feat_transform`` / ``ffn.{fc1,fc2}`` (:mod:`kmax_deeplab.modeling.knet.kernel_update`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from kmax_deeplab.checkpoints.detectron2 import to_numpy
from kmax_deeplab.checkpoints.table import CheckpointMismatchError, Row, apply_rows, to_tensor
from kmax_deeplab.fileio import atomic_path

__all__ = ["BN_PARAM", "resnet_rows", "resnet_rows_inverse", "kernel_update_rows", "kernel_update_rows_inverse",
           "export_openmmlab", "write_openmmlab_pth"]

#: A batch-norm entry name, captured as ``p``.
BN_PARAM = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"


def resnet_rows(prefix: str = "", *, stage: str = r"\d", conv: str = r"\d") -> tuple[Row, ...]:
    """mmcv/torchvision ResNet block names under ``prefix`` -> ours (stem rows not included).

    Args:
        prefix: e.g. ``"backbone."`` (OpenMMLab checkpoints) or ``""`` (ImageNet files).
        stage / conv: regex character classes for the stage and conv numbers.
    """
    p = re.escape(prefix)
    block = rf"{p}layer(?P<s>{stage})\.(?P<b>\d+)"
    ours = prefix + "res{s:+1}.{b}"
    return (
        Row(rf"{block}\.conv(?P<k>{conv})\.weight", ours + ".conv{k}.weight"),
        Row(rf"{block}\.bn(?P<k>{conv})\.{BN_PARAM}", ours + ".conv{k}.norm.{p}"),
        Row(rf"{block}\.downsample\.0\.weight", ours + ".shortcut.weight"),
        Row(rf"{block}\.downsample\.1\.{BN_PARAM}", ours + ".shortcut.norm.{p}"),
    )


def resnet_rows_inverse(prefix: str = "") -> tuple[Row, ...]:
    """Our ResNet block names under ``prefix`` -> mmcv/torchvision (the inverse of :func:`resnet_rows`)."""
    p = re.escape(prefix)
    block = rf"{p}res(?P<s>\d)\.(?P<b>\d+)"
    theirs = prefix + "layer{s:-1}.{b}"
    return (
        Row(rf"{block}\.conv(?P<k>\d)\.weight", theirs + ".conv{k}.weight"),
        Row(rf"{block}\.conv(?P<k>\d)\.norm\.{BN_PARAM}", theirs + ".bn{k}.{p}"),
        Row(rf"{block}\.shortcut\.weight", theirs + ".downsample.0.weight"),
        Row(rf"{block}\.shortcut\.norm\.{BN_PARAM}", theirs + ".downsample.1.{p}"),
    )


def kernel_update_rows(head: str, others: str) -> tuple[Row, ...]:
    """K-Net update-stage names ``{head}.{i}.…`` -> our ``stages.{i}.…``.

    Args:
        head: the OpenMMLab module list, e.g. ``"roi_head.mask_head"``.
        others: regex of the stage's entries kept under the same name (norms, FCs), e.g.
            ``r"(?:attention_norm|ffn_norm|mask_fcs|fc_mask)\\..+"``.
    """
    stage = re.escape(head) + r"\.(?P<i>\d+)"
    return (
        Row(rf"{stage}\.attention\.attn\.(?P<r>.+)", "stages.{i}.attention.{r}"),
        Row(rf"{stage}\.kernel_update_conv\.(?P<r>.+)", "stages.{i}.updator.{r}"),
        Row(rf"{stage}\.feat_transform\.conv\.(?P<p>weight|bias)", "stages.{i}.feat_transform.{p}"),
        Row(rf"{stage}\.ffn\.layers\.0\.0\.(?P<p>weight|bias)", "stages.{i}.ffn.fc1.{p}"),
        Row(rf"{stage}\.ffn\.layers\.1\.(?P<p>weight|bias)", "stages.{i}.ffn.fc2.{p}"),
        Row(rf"{stage}\.(?P<r>{others})", "stages.{i}.{r}"),
    )


def kernel_update_rows_inverse(head: str, others: str) -> tuple[Row, ...]:
    """Our ``stages.{i}.…`` -> ``{head}.{i}.…`` (the inverse of :func:`kernel_update_rows`)."""
    theirs = head + ".{i}"
    return (
        Row(r"stages\.(?P<i>\d+)\.attention\.(?P<r>in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
            theirs + ".attention.attn.{r}"),
        Row(r"stages\.(?P<i>\d+)\.updator\.(?P<r>.+)", theirs + ".kernel_update_conv.{r}"),
        Row(r"stages\.(?P<i>\d+)\.feat_transform\.(?P<p>weight|bias)", theirs + ".feat_transform.conv.{p}"),
        Row(r"stages\.(?P<i>\d+)\.ffn\.fc1\.(?P<p>weight|bias)", theirs + ".ffn.layers.0.0.{p}"),
        Row(r"stages\.(?P<i>\d+)\.ffn\.fc2\.(?P<p>weight|bias)", theirs + ".ffn.layers.1.{p}"),
        Row(rf"stages\.(?P<i>\d+)\.(?P<r>{others})", theirs + ".{r}"),
    )


def export_openmmlab(state: Mapping[str, np.ndarray | torch.Tensor], rows, layout: str) -> dict[str, np.ndarray]:
    """Rename our state dict by ``rows`` (an ``OURS_TO_*`` table) into an OpenMMLab (mmdet / mmseg)
    layout, adding the ``backbone.…relative_position_index`` buffers a Swin ``WindowMSA`` stores.

    Raises:
        CheckpointMismatchError: a key no row converts (the message names ``layout``).
    """
    from kmax_deeplab.checkpoints.swin import relative_position_index_entries

    converted, _, unmatched = apply_rows(to_numpy(state), rows)
    if unmatched:
        raise CheckpointMismatchError(f"cannot export to the {layout} K-Net layout: {len(unmatched)} keys "
                                      f"have no {layout} name: {unmatched[:20]}")
    converted.update({k: v.numpy() for k, v in relative_position_index_entries(converted, "backbone.").items()})
    return converted


def write_openmmlab_pth(state: Mapping[str, np.ndarray], path: str | Path, meta: Mapping[str, Any] | None) -> Path:
    """Write an already-renamed state dict as an OpenMMLab ``.pth`` (``{"state_dict", "meta"}``), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: to_tensor(v) for k, v in state.items()}, "meta": dict(meta or {})}, tmp)
    return path
