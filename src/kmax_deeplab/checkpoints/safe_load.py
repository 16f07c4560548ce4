"""Load foreign ``.pth`` / ``.pkl`` weight files without executing anything.

Pickles are untrusted input. ``.pth`` files go through ``torch.load(weights_only=True)``;
``.pkl`` files (detectron2 format: ``{"model": {name: ndarray}, ...}``) go through
:class:`NumpyOnlyUnpickler`, which resolves only the globals needed to rebuild numpy
arrays and refuses every other global (``os.system``, ``builtins.eval``, ...) before
anything is called.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["UnsafeCheckpointError", "NumpyOnlyUnpickler", "load_pickle_numpy", "load_weights_file"]

# (module, name) pairs a numpy-array pickle needs; nothing here runs user code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles store array bytes as latin-1 text
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A pickle asked for a global outside the numpy allow-list (it may try to run code)."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only builtin containers, scalars and numpy arrays.

    Raises:
        UnsafeCheckpointError: on any other global (checked before it is resolved).
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"refusing to load global {module}.{name} (only numpy arrays are allowed)")

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise UnsafeCheckpointError("refusing persistent ids in a pickle")


def load_pickle_numpy(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`NumpyOnlyUnpickler` (``encoding="latin1"`` as detectron2 does).

    Raises:
        UnsafeCheckpointError: the pickle references a forbidden global (message names the file).
        ValueError: truncated or malformed pickle.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return NumpyOnlyUnpickler(f, encoding="latin1").load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path}: not a valid pickle weights file (truncated or corrupt: {e})") from None


def _first_line(exc: BaseException) -> str:
    """The first line of an error message (an empty message gives the type name).

    torch's refusal goes on to advise ``weights_only=False``, which would execute the
    pickle: only the first line is ever shown.
    """
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _refusal_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused (e.g. ``Unsupported global: GLOBAL
    posix.system``), without its advice to retry with ``weights_only=False``."""
    for line in str(exc).splitlines():
        if "Unsupported" in line or "Unpickler error" in line:
            line = line.split("WeightsUnpickler error:")[-1].strip()
            return line.split(" was not an allowed global")[0] + " (the file may run code)"
    return "the pickle holds objects other than tensors (the file may run code)"


def load_weights_file(path: str | Path) -> dict[str, np.ndarray | torch.Tensor]:
    """Read a ``.pth``/``.pt``/``.pkl``/``.safetensors`` weights file into ``name -> tensor``.

    A top-level ``{"model": {...}}`` (detectron2, FB ConvNeXt) or ``{"state_dict": {...}}``
    wrapper is unwrapped. Nothing in the file is executed.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle references code.
        ValueError: truncated/corrupt file, or no tensor dict inside (the file is named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".pkl":
        obj = load_pickle_numpy(path)
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path}: cannot read safetensors weights ({e})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(f"{path}: refused by torch.load(weights_only=True): "
                                        f"{_refusal_reason(e)}") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError) as e:
            raise ValueError(f"{path}: not a valid PyTorch weights file (truncated or corrupt: "
                             f"{_first_line(e)})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a dict of tensors (optionally under 'model'), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, (np.ndarray, torch.Tensor)):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v
    return out
