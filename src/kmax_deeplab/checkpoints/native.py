"""The native checkpoint format: ``model.safetensors`` + ``config.yaml`` in one folder.

``kmax convert`` writes it, the model zoo caches it, ``Predictor.from_pretrained`` and the
trainer's exports read it. Both files are written atomically, with a third,
``model.safetensors.sha256`` (``sha256sum`` format), which :func:`load_native` checks; it
also refuses weights holding NaN/inf, naming the tensor
(:mod:`kmax_deeplab.checkpoints.checksums`). A folder without the sidecar (written before
it existed) loads with a warning.

Checkpoints converted from deeplab2 before ``model.reference`` selected the whole network
(their ``config.yaml`` says ``reference: bytedance``, the default then) are recognised by
the safetensors metadata the converter writes (``source: deeplab2`` without a
``reference`` entry, which every conversion has carried since) and upgraded on load to
``model.reference: deeplab2`` with a warning; see :func:`upgrade_deeplab2_reference`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kmax_deeplab.checkpoints.checksums import check_finite, sha256_sidecar, verify_sha256, write_sha256
from kmax_deeplab.config import Config, load_config, save_config
from kmax_deeplab.fileio import atomic_path

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"


def save_native(directory: str | Path, state_dict: Mapping[str, torch.Tensor], cfg: Config,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``state_dict`` and ``cfg`` into ``directory`` (created if needed).

    Args:
        directory: output folder; gets ``model.safetensors`` and ``config.yaml``.
        state_dict: name -> tensor (made contiguous and detached; shared storage copied).
        cfg: the :class:`Config` that builds the model.
        metadata: optional string metadata stored in the safetensors header (e.g. source).

    Returns:
        The folder path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))
    write_sha256(directory / WEIGHTS_NAME)
    with atomic_path(directory / CONFIG_NAME) as tmp:
        save_config(cfg, tmp)
    return directory


def load_native(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Config, dict[str, torch.Tensor]]:
    """Read a folder written by :func:`save_native`.

    Returns:
        ``(cfg, state_dict)``.

    Raises:
        FileNotFoundError: the folder lacks ``model.safetensors`` or ``config.yaml``.
        ValueError: the config is malformed, or the weights file is not valid safetensors.
        ChecksumError: ``model.safetensors`` does not match ``model.safetensors.sha256``.
        NonFiniteWeightsError: a tensor holds NaN/inf (the message names it).
    """
    directory = Path(directory)
    weights, config = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    for p in (weights, config):
        if not p.is_file():
            raise FileNotFoundError(f"{directory}: not a kmax-deeplab checkpoint folder ({p.name} is missing)")
    cfg = load_config(config)
    if not verify_sha256(weights):
        warnings.warn(f"{directory}: no {sha256_sidecar(weights).name}; the weights are not "
                      "verified (re-save the folder to add one)", UserWarning, stacklevel=2)
    try:
        state = load_file(str(weights), device=str(device))
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{weights}: cannot read safetensors weights ({e})") from None
    check_finite(state, str(weights))
    upgrade_deeplab2_reference(cfg, metadata, str(directory))
    return cfg, state


def upgrade_deeplab2_reference(cfg: Config, metadata: Mapping[str, str], source: str = "checkpoint") -> bool:
    """Give a pre-fix deeplab2 conversion deeplab2's network (in place); True when it did.

    A folder written by ``kmax convert --from deeplab2`` (or the zoo) before the fix has
    ``source: deeplab2`` and no ``reference`` in its safetensors metadata, and a config that
    builds the bytedance network (no pixel-decoder dilation, raw aux-semantic inputs,
    bytedance post-processing): its predictions are not deeplab2's. Such a config gets
    ``model.reference = "deeplab2"`` and ``postprocess.variant = "auto"`` (that of the
    reference), with a warning that says how to make it permanent.
    """
    reference = getattr(cfg.model, "reference", None)  # families without the switch: nothing to do
    if metadata.get("source") != "deeplab2" or "reference" in metadata or reference in (None, "deeplab2"):
        return False
    warnings.warn(
        f"{source}: converted from deeplab2 before model.reference selected the whole network; its "
        f"config.yaml builds the {cfg.model.reference!r} network, so model.reference is set to 'deeplab2' "
        "(atrous pixel-decoder bottlenecks, activated aux-semantic inputs, deeplab2 post-processing). "
        "Convert the checkpoint again to make this permanent.", UserWarning, stacklevel=3)
    cfg.model.reference = "deeplab2"
    if cfg.postprocess.variant == "bytedance":
        cfg.postprocess.variant = "auto"
    return True


def load_state_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state`` into ``model``; the error names ``source`` and the keys.

    Raises:
        ValueError: missing keys, unexpected keys or another shape (first 20 of each, a count).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        def fmt(keys):
            return ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "")
        parts = [f"{len(missing)} missing: {fmt(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {fmt(unexpected)}" if unexpected else "",
                 f"{len(wrong)} with another shape: {fmt(wrong)}" if wrong else ""]
        raise ValueError(f"{source}: weights do not fit the model built from the config ("
                         + "; ".join(p for p in parts if p) + ")")
    model.load_state_dict(dict(state), strict=True)
