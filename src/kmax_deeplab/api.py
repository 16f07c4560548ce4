"""The public entry points: :func:`build_model` and :func:`load_config` (``kmax_deeplab.build_model``).

Like timm's ``create_model`` or segment-anything's ``sam_model_registry[...]``: a user never
imports a family's module to get a model; the config's ``model.meta_architecture`` picks the
family from :data:`kmax_deeplab.modeling.families.FAMILIES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

__all__ = ["build_model", "load_config"]


def load_config(source: Any, overrides: Sequence[str] = ()) -> Any:
    """A :class:`~kmax_deeplab.config.Config` from a preset name, a YAML/JSON file, a native
    checkpoint folder (its ``config.yaml``) or a ``Config``, with ``key=value`` overrides.

    Raises:
        FileNotFoundError: ``source`` is neither a preset, a file nor a checkpoint folder.
        ValueError: unknown keys (the message names the family and the valid keys) or bad values.
    """
    from kmax_deeplab.config import Config, apply_overrides
    from kmax_deeplab.config import load_config as _load

    if isinstance(source, Config):
        return apply_overrides(source, overrides) if overrides else source
    path = Path(str(source))
    if path.is_dir():
        from kmax_deeplab.checkpoints.native import CONFIG_NAME

        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path}: not a kmax-deeplab checkpoint folder ({CONFIG_NAME} is missing)")
        return _load(path / CONFIG_NAME, overrides)
    return _load(source, overrides)


def build_model(source: Any, *, overrides: Sequence[str] = (), weights: str | Path | None = None) -> nn.Module:
    """Build the model of any family from a preset, a ``Config``, a YAML file or a native folder.

    Args:
        source: a preset name (``kmax info`` lists them, e.g. ``"coco/kmax_r50"``), a
            :class:`~kmax_deeplab.config.Config`, a YAML/JSON config file, or a native checkpoint
            folder (``model.safetensors`` + ``config.yaml``, e.g. a run's ``model_final/`` or
            ``kmax convert`` output), whose weights are loaded.
        overrides: ``key=value`` config overrides (``model.num_classes=19``).
        weights: a native folder or ``.safetensors`` file to load (strictly) into the model.

    Returns:
        The model (train mode), taking ``[B, 3, H, W]`` float RGB 0..255 as its family's input
        geometry says and returning a ``MaskTransformerOutput``. Without weights it has its
        initialisation, seeded by the global torch RNG.

    Raises:
        FileNotFoundError / ValueError: bad source, config or weights (named).

    Example:
        >>> import kmax_deeplab
        >>> model = kmax_deeplab.build_model("synthetic/kmax_tiny")  # doctest: +SKIP
    """
    from kmax_deeplab.checkpoints.native import load_state_strict
    from kmax_deeplab.modeling.families import family_of

    cfg = load_config(source, overrides)
    model = family_of(cfg).build_model(cfg)
    if weights is None and isinstance(source, (str, Path)) and Path(source).is_dir():
        weights = source
    if weights is not None:
        load_state_strict(model, read_weights(weights), str(weights))
    return model


def read_weights(path: str | Path) -> dict:
    """Weights of a native folder or a ``.safetensors`` file (our key names).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: unreadable safetensors, or another format (use ``kmax convert``).
        ChecksumError / NonFiniteWeightsError: a SHA-256 mismatch, or NaN/inf weights.
    """
    path = Path(path)
    if path.is_dir():
        from kmax_deeplab.checkpoints.native import load_native

        return load_native(path)[1]
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        from kmax_deeplab.checkpoints.checksums import check_finite, verify_sha256

        verify_sha256(path)  # when a .sha256 sidecar is beside the file
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path}: cannot read safetensors weights ({e})") from None
        check_finite(state, str(path))  # NaN/inf refused, naming the tensor
        return state
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file or checkpoint folder")
    raise ValueError(f"{path}: weights must be a checkpoint folder (model.safetensors + "
                     "config.yaml) or a .safetensors file; convert other formats with kmax convert")
