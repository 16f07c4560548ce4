"""Resume that means it: the checks ``kmax train --resume`` runs before continuing a run.

* :func:`config_changes` / :func:`check_config_changes` -- the stored config (the one the
  checkpoint was trained with) is compared with the requested one; differences that change
  the run (schedule, batch, model, data, losses, ...) are refused unless listed in
  ``--resume-with-changes`` (a key such as ``solver.max_iters`` or a whole section such as
  ``solver``). Keys that only change logging or where files go (:data:`HARMLESS_KEYS`) pass.
* :func:`latest_intact_checkpoint` -- the newest checkpoint that loads; a corrupt or
  missing newer one is skipped with a warning naming it.
* :func:`apply_solver_schedule` -- after an accepted schedule change, the loaded scheduler
  and learning rates follow the new values (a checkpoint's scheduler state would otherwise
  silently keep the old ``max_iters``/warmup/base LR).
* :func:`truncate_metrics` -- rows of ``metrics.jsonl`` after the resumed iteration (from
  the interrupted run; they will be written again) and a torn last line are removed.
* stale ``.tmp`` files of interrupted atomic writes are removed
  (:func:`kmax_deeplab.fileio.remove_stale_tmp_files`).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from kmax_deeplab.engine import checkpointer as ckpt
from kmax_deeplab.errors import ConfigError, InputError
from kmax_deeplab.fileio import atomic_write_text, remove_stale_tmp_files

logger = logging.getLogger("kmax_deeplab.train")

__all__ = ["HARMLESS_KEYS", "ResumePoint", "config_changes", "check_config_changes",
           "parse_accepted", "latest_intact_checkpoint", "apply_solver_schedule",
           "truncate_metrics", "prepare_resume", "check_fresh_run_folder", "clean_run_folder",
           "remove_stale_tmp_files"]

HARMLESS_KEYS = ("name", "solver.output_dir", "solver.log_period", "solver.checkpoint_period",
                 "solver.eval_period", "solver.keep_last_n", "solver.device", "data.num_workers",
                 "model.weights")
"""Config keys whose change does not change what is trained (logging, file locations; the
initial weights, which a resumed run replaces by its checkpoint)."""


@dataclass
class ResumePoint:
    """A checkpoint to continue from: its path and its loaded state (``weights_only``)."""

    path: Path
    state: dict


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def config_changes(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Dotted keys whose value differs: ``[(key, stored value, requested value)]``, sorted.

    Tuples and lists compare equal (both are JSON lists); a key present on one side only
    (a config written by another version) counts as a change with ``None`` on the other.
    """
    a = _flatten(json.loads(json.dumps(stored)))
    b = _flatten(json.loads(json.dumps(requested)))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def parse_accepted(values: Iterable[str] | None) -> list[str]:
    """``--resume-with-changes`` values (repeatable, comma-separated) as a list of keys."""
    out: list[str] = []
    for v in values or ():
        out += [p.strip() for p in str(v).split(",") if p.strip()]
    return out


def _covered(key: str, accepted: Sequence[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in accepted)


def check_config_changes(stored: Mapping[str, Any], requested: Mapping[str, Any],
                         accepted: Sequence[str] = (), *, where: str = "the run") -> list[str]:
    """Refuse config differences that change the run; returns the accepted changed keys.

    Args:
        stored: the config the checkpoint was trained with (nested dict).
        requested: the config of this invocation (nested dict).
        accepted: keys or sections (``solver.max_iters``, ``solver``) the user accepts.
        where: the run folder, named in the error.

    Raises:
        ConfigError: naming every refused key with its stored and requested value, and
            the ``--resume-with-changes`` option that would accept them.
    """
    changes = config_changes(stored, requested)
    refused = [(k, a, b) for k, a, b in changes
               if k not in HARMLESS_KEYS and not _covered(k, accepted)]
    if refused:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in refused[:8])
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        keys = ",".join(k for k, _, _ in refused)
        raise ConfigError(
            f"{where}: --resume with a config that changes the run: {shown}{more}",
            hint=f"resume with the stored config, or accept with --resume-with-changes {keys}")
    used = [k for k, _, _ in changes if _covered(k, accepted)]
    if used:
        logger.warning("resuming %s with accepted config changes: %s", where,
                       ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes if k in used))
    return used


def _checkpoint_files(output_dir: Path) -> list[Path]:
    """``model_NNNNNNN.pt`` files, newest iteration first."""
    files = []
    for p in output_dir.glob("model_*.pt"):
        stem = p.stem[len("model_"):]
        if stem.isdigit() and p.is_file():
            files.append((int(stem), p))
    return [p for _, p in sorted(files, reverse=True)]


def latest_intact_checkpoint(output_dir: str | Path, map_location: str = "cpu") -> ResumePoint | None:
    """The newest checkpoint of ``output_dir`` that loads, falling back past broken ones.

    Candidates are every ``model_NNNNNNN.pt``, newest iteration first (a checkpoint renamed
    into place just before a crash is complete, even if ``last_checkpoint`` still names the
    previous one). Each one that does not load is skipped with a warning naming it.

    Returns:
        The :class:`ResumePoint`, or None when the folder has no checkpoint at all.

    Raises:
        InputError: checkpoints exist but none loads (every file is named).
    """
    output_dir = Path(output_dir)
    pointer = output_dir / ckpt.LAST_CHECKPOINT
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        if name and not (output_dir / name).is_file():
            warnings.warn(f"{pointer} names {name!r}, which does not exist; using the newest "
                          "intact checkpoint instead", RuntimeWarning, stacklevel=2)
    broken = []
    for path in _checkpoint_files(output_dir):
        try:
            state = ckpt.load_checkpoint(path, map_location=map_location)
        except (ValueError, OSError) as e:
            broken.append(path.name)
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(f"{path}: corrupt or unreadable checkpoint ({msg}); falling back to "
                          "the previous one", RuntimeWarning, stacklevel=2)
            continue
        return ResumePoint(path, state)
    if broken:
        raise InputError(f"{output_dir}: no intact checkpoint to resume from (broken: "
                         f"{', '.join(broken)})", hint="start a new run in another folder")
    return None


def apply_solver_schedule(scheduler: Any, optimizer: Any, solver: Any) -> bool:
    """Make a loaded ``WarmupPolyLR``/``WarmupStepLR`` and the LRs follow ``solver`` (accepted changes).

    Returns:
        Whether anything changed (nothing does when the config is the stored one, so an
        unchanged resume stays bit-identical).
    """
    changed = False
    def ints(v):
        return [int(x) for x in v]

    for attr, key, kind in (("max_iters", "max_iters", int), ("warmup_iters", "warmup_iters", int),
                            ("warmup_factor", "warmup_factor", float), ("power", "poly_power", float),
                            ("steps", "lr_steps", ints), ("gamma", "lr_gamma", float)):
        if hasattr(scheduler, attr) and hasattr(solver, key):
            new = kind(getattr(solver, key))
            if getattr(scheduler, attr) != new:
                setattr(scheduler, attr, new)
                changed = True
    if hasattr(solver, "base_lr") and hasattr(scheduler, "base_lrs"):
        base = [float(solver.base_lr) * g.get("lr_multiplier", 1.0) for g in optimizer.param_groups]
        if list(scheduler.base_lrs) != base:
            scheduler.base_lrs = base
            for g, b in zip(optimizer.param_groups, base):
                g["initial_lr"] = b
            changed = True
    if changed and hasattr(scheduler, "get_lr"):
        lrs = scheduler.get_lr()
        for g, lr in zip(optimizer.param_groups, lrs):
            g["lr"] = lr
        scheduler._last_lr = list(lrs)
    return changed


def truncate_metrics(path: str | Path, iteration: int) -> int:
    """Drop rows with ``iteration`` > ``iteration`` (and unparsable lines) from ``metrics.jsonl``.

    Returns:
        The number of lines removed (the file is rewritten atomically only if any).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, removed = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            it = int(row["iteration"])
        except (ValueError, KeyError, TypeError):
            removed += 1
            continue
        if it > iteration:
            removed += 1
        else:
            kept.append(line)
    if removed:
        atomic_write_text(path, "".join(x + "\n" for x in kept))
        logger.info("%s: removed %d row(s) after iteration %d (re-run after resume)", path,
                    removed, iteration)
    return removed


def prepare_resume(output_dir: str | Path, requested: Mapping[str, Any],
                   accepted: Sequence[str] = ()) -> ResumePoint | None:
    """Pick the checkpoint to resume from and check the config against it (reads only).

    Returns:
        The :class:`ResumePoint`, or None when the folder has no checkpoint (a fresh start).

    Raises:
        ConfigError: refused config changes (see :func:`check_config_changes`).
        InputError: checkpoints exist but none loads.
    """
    point = latest_intact_checkpoint(output_dir)
    if point is not None and point.state.get("config"):
        check_config_changes(point.state["config"], requested, accepted, where=str(output_dir))
    return point


def check_fresh_run_folder(output_dir: str | Path) -> None:
    """A run without ``--resume`` must not write into a folder holding another run's checkpoints.

    (Its ``metrics.jsonl`` would be mixed, and a later ``--resume`` could pick the older
    run's newer checkpoint.)

    Raises:
        InputError: ``output_dir`` has ``model_*.pt`` files or ``last_checkpoint``.
    """
    output_dir = Path(output_dir)
    found = _checkpoint_files(output_dir) if output_dir.is_dir() else []
    if found or (output_dir / ckpt.LAST_CHECKPOINT).is_file():
        names = ", ".join(p.name for p in found[:3]) or ckpt.LAST_CHECKPOINT
        raise InputError(f"{output_dir}: already holds a training run ({names})",
                         hint="--resume continues it; choose another --output-dir to start afresh")


def clean_run_folder(output_dir: str | Path, iteration: int) -> None:
    """Before continuing at ``iteration``: remove stale ``.tmp`` files, truncate ``metrics.jsonl``."""
    output_dir = Path(output_dir)
    for folder in (output_dir, output_dir / "model_final"):
        for p in remove_stale_tmp_files(folder):
            logger.info("removed stale temporary file %s", p)
    truncate_metrics(output_dir / "metrics.jsonl", iteration)
