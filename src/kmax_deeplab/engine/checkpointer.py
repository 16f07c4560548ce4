"""Atomic training checkpoints and exact RNG capture.

A training checkpoint ``model_0001000.pt`` is one ``torch.save`` dict::

    {"format": "kmax-train-v1", "iteration": int, "samples_seen": int,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "rng": [per-rank RNG state], "world_size": int, "config": nested dict}

It is written through :func:`kmax_deeplab.fileio.atomic_path` (temporary file + fsync +
rename), then the text file ``last_checkpoint`` is atomically rewritten to name it; a
crash at any moment leaves the previous checkpoint and pointer intact. Every value is a
tensor or a plain Python type so :func:`load_checkpoint` can use
``torch.load(weights_only=True)`` (a checkpoint is untrusted input; DESIGN.md).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmax_deeplab.fileio import atomic_path, atomic_write_text

LAST_CHECKPOINT = "last_checkpoint"
FORMAT = "kmax-train-v1"


def capture_rng_state() -> dict[str, Any]:
    """Return python, numpy, torch-CPU and CUDA RNG states as tensors / plain types."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(iteration: int) -> str:
    """File name of the checkpoint written after ``iteration`` optimizer steps."""
    return f"model_{iteration:07d}.pt"


def save_checkpoint(output_dir: str | Path, state: dict[str, Any], iteration: int, *,
                    keep_last_n: int = 0) -> Path:
    """Atomically write ``state`` as ``model_{iteration}.pt`` and point ``last_checkpoint`` at it.

    Args:
        keep_last_n: after writing, delete all but the newest ``keep_last_n`` checkpoints
            (``solver.keep_last_n``; 0 keeps every checkpoint).

    Returns:
        The checkpoint path.
    """
    output_dir = Path(output_dir)
    path = output_dir / checkpoint_name(iteration)
    state = {"format": FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    atomic_write_text(output_dir / LAST_CHECKPOINT, path.name + "\n")
    if keep_last_n > 0:
        prune_checkpoints(output_dir, keep_last_n, keep=path)
    return path


def prune_checkpoints(output_dir: str | Path, keep_last_n: int, *, keep: Path | None = None) -> list[Path]:
    """Delete ``model_NNNNNNN.pt`` files except the newest ``keep_last_n`` (and ``keep``).

    Returns:
        The deleted paths.
    """
    output_dir = Path(output_dir)
    found = sorted((int(p.stem[6:]), p) for p in output_dir.glob("model_*.pt")
                   if p.stem[6:].isdigit())
    doomed = [p for _, p in found[:-keep_last_n]] if keep_last_n > 0 else []
    removed = []
    for p in doomed:
        if keep is not None and p.resolve() == Path(keep).resolve():
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint named by ``output_dir/last_checkpoint``, or None when there is none.

    Raises:
        FileNotFoundError: the pointer names a file that does not exist.
    """
    output_dir = Path(output_dir)
    pointer = output_dir / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = output_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"{pointer} names {name!r}, which does not exist in {output_dir}")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``.

    Raises:
        ValueError: the file is not a kmax training checkpoint (names the file).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, or a pickle with non-tensor objects
        # First line only: torch's message goes on to advise weights_only=False, which
        # would run the pickle's code -- never repeat that advice.
        first = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot load as a kmax training checkpoint: {first}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a kmax training checkpoint (format {FORMAT!r} expected)")
    return state
