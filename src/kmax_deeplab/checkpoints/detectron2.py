"""bytedance (BD) detectron2 kMaX-DeepLab checkpoints <-> our state dict (spec §5.1).

Our names are BD's with ``sem_seg_head.pixel_decoder.`` -> ``pixel_decoder.``,
``sem_seg_head.predictor.`` -> ``predictor.``, ``backbone.`` unchanged and BD's misspelt
``_predcitor`` spelled ``_predictor``. Tensors are identical (no transposes).

Files: ``.pth`` (``{"model": name -> Tensor, ...}``, read with ``weights_only=True``) and
``.pkl`` (``{"model": name -> ndarray, "__author__": ..., "matching_heuristics": True}``,
read with a numpy-only unpickler). The COCONut fork (bytedance/coconut_cvpr2024,
``tutorials/kmaxdeeplab_panoptic``) builds the same modules under the same names (its
``deeplab2_resnet`` backbone reuses detectron2's ``stem.conv1``/``res{s}.{b}.conv*`` names),
so its checkpoints load through the same table; both ``_predcitor`` and ``_predictor`` are
accepted on input.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from kmax_deeplab.checkpoints.safe_load import load_weights_file
from kmax_deeplab.checkpoints.table import (
    CheckpointMismatchError,
    Row,
    apply_rows,
    check_against_target,
    target_shapes,
    to_tensor,
)
from kmax_deeplab.fileio import atomic_path

__all__ = ["BD_TO_OURS", "OURS_TO_BD", "IGNORED", "bd_to_ours", "ours_to_bd", "load_detectron2_checkpoint",
           "save_detectron2", "to_numpy"]

_PRED = r"(?P<a>(?:_kmax_transformer_layers\.\d+\.)?)_pred(?:citor|ictor)\.(?P<r>.+)"

#: BD -> ours. The first matching row wins.
BD_TO_OURS = (
    Row(r"backbone\.(?P<r>.+)", "backbone.{r}"),
    Row(r"sem_seg_head\.pixel_decoder\.(?P<r>.+)", "pixel_decoder.{r}"),
    Row(rf"sem_seg_head\.predictor\.{_PRED}", "predictor.{a}_predictor.{r}"),
    Row(r"sem_seg_head\.predictor\.(?P<r>.+)", "predictor.{r}"),
)

#: ours -> BD (writes BD's spelling ``_predcitor`` so BD's code loads the file).
OURS_TO_BD = (
    Row(r"backbone\.(?P<r>.+)", "backbone.{r}"),
    Row(r"pixel_decoder\.(?P<r>.+)", "sem_seg_head.pixel_decoder.{r}"),
    Row(r"predictor\.(?P<a>(?:_kmax_transformer_layers\.\d+\.)?)_predictor\.(?P<r>.+)",
        "sem_seg_head.predictor.{a}_predcitor.{r}"),
    Row(r"predictor\.(?P<r>.+)", "sem_seg_head.predictor.{r}"),
)

#: BD entries dropped on purpose: normalisation constants (non-persistent in BD, present in
#: old detectron2 files) and loss buffers.
IGNORED = (r"pixel_mean", r"pixel_std", r"criterion\..*")


def to_numpy(state: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """name -> numpy array (bf16 widened to float32)."""
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            v = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        out[k] = np.asarray(v)
    return out


def bd_to_ours(state: Mapping[str, np.ndarray | torch.Tensor], target: torch.nn.Module | Mapping[str, object], *,
               strict: bool = True, source: str = "detectron2 checkpoint") -> dict[str, torch.Tensor]:
    """Rename a BD state dict to ours and check it against ``target``.

    Args:
        state: BD name -> tensor/array (the ``"model"`` entry of a detectron2 file).
        target: the model, its state dict, or name -> shape.
        strict: every BD entry used and every target entry produced (``num_batches_tracked``
            may be created as zeros).
        source: checkpoint description for messages.

    Returns:
        our name -> tensor, float dtypes as stored.

    Raises:
        CheckpointMismatchError: leftovers on either side or shape mismatches (e.g. a
            134-class COCO head into a 20-class Cityscapes model), listed in the message.
    """
    converted, origin, unmatched = apply_rows(to_numpy(state), BD_TO_OURS, ignored=IGNORED)
    return check_against_target(converted, target_shapes(target), source=source, unmatched=unmatched,
                                origin=origin, strict=strict)


def ours_to_bd(state: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """Rename our state dict to BD's names (tensors unchanged).

    Raises:
        CheckpointMismatchError: a key outside ``backbone.``/``pixel_decoder.``/``predictor.``.
    """
    converted, _, unmatched = apply_rows(to_numpy(state), OURS_TO_BD)
    if unmatched:
        raise CheckpointMismatchError(f"cannot export to the detectron2 layout: {len(unmatched)} keys outside "
                                      f"backbone./pixel_decoder./predictor.: {unmatched[:20]}")
    return converted


def load_detectron2_checkpoint(path: str | Path, target: torch.nn.Module | Mapping[str, object], *,
                               strict: bool = True) -> dict[str, torch.Tensor]:
    """Read a BD ``.pth``/``.pkl`` safely and convert it (see :func:`bd_to_ours`)."""
    return bd_to_ours(load_weights_file(path), target, strict=strict, source=str(path))


def save_detectron2(state: Mapping[str, np.ndarray | torch.Tensor], path: str | Path) -> Path:
    """Write our state dict as a BD detectron2 checkpoint, atomically.

    ``.pkl`` -> ``{"model": name -> ndarray, "__author__": "kmax_deeplab",
    "matching_heuristics": True}``; any other suffix -> ``torch.save({"model": name -> Tensor})``.
    """
    path = Path(path)
    bd = ours_to_bd(state)
    with atomic_path(path) as tmp:
        if path.suffix == ".pkl":
            with open(tmp, "wb") as f:
                pickle.dump({"model": bd, "__author__": "kmax_deeplab", "matching_heuristics": True}, f,
                            protocol=4)
        else:
            torch.save({"model": {k: to_tensor(v) for k, v in bd.items()}}, tmp)
    return path
