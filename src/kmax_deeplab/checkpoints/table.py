"""The converter engine: a table of rows plus a strict check (STYLE.md "Checkpoints").

A row is ``(foreign-name regex, our-name template, tensor transform)``. The first row
whose regex fully matches a foreign name converts it. Templates are ``str.format``
strings over the regex's named groups with a few conversions in the format spec:

- ``{b:-1}`` / ``{b:+1}``: the integer group minus / plus one (TF 1-based blocks -> 0-based);
- ``{j:*2}`` / ``{j://2}``: the integer group times / floor-divided by two (mmdet module lists
  with parameter-free modules interleaved);
- ``{p:bn}``: TF batch-norm names (``gamma, beta, moving_mean, moving_variance``) ->
  ``weight, bias, running_mean, running_var``;
- ``{p:wb}``: ``kernel`` -> ``weight``, ``bias`` -> ``bias``.

After conversion :func:`check_against_target` compares the result with the target's
names and shapes: every foreign key consumed (or ignored by an explicit pattern), every
target key produced, every shape equal; otherwise one error lists the leftovers.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "CheckpointMismatchError",
    "Row",
    "apply_rows",
    "check_against_target",
    "target_shapes",
    "to_tensor",
]

Transform = Callable[[np.ndarray], np.ndarray]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the target model (leftover, missing or mis-shaped keys)."""


def identity(x: np.ndarray) -> np.ndarray:
    """Keep the tensor as it is."""
    return x


_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
       "moving_variance": "running_var"}
_WB = {"kernel": "weight", "bias": "bias", "depthwise_kernel": "weight"}


class _Formatter(string.Formatter):
    def format_field(self, value, format_spec):  # noqa: D102 - see module docstring
        if format_spec in ("-1", "+1"):
            return str(int(value) + int(format_spec))
        if format_spec == "*2":
            return str(int(value) * 2)
        if format_spec == "//2":
            return str(int(value) // 2)
        if format_spec == "bn":
            return _BN[value]
        if format_spec == "wb":
            return _WB[value]
        return super().format_field(value, format_spec)


_FMT = _Formatter()


@dataclass(frozen=True)
class Row:
    """One conversion row.

    Attributes:
        pattern: regex that must fully match the foreign name.
        template: our name, ``str.format`` over the named groups (see module docstring).
        transform: numpy array -> numpy array (transpose/reshape/reorder).
    """

    pattern: str
    template: str
    transform: Transform = identity
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.pattern))


def apply_rows(foreign: Mapping[str, np.ndarray], rows: Sequence[Row], *,
               ignored: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """Convert every foreign tensor with the first matching row.

    Args:
        foreign: foreign name -> array.
        rows: the table, tried in order.
        ignored: regexes (full match) of foreign names that are deliberately dropped.

    Returns:
        ``(converted, origin, unmatched)``: our name -> array, our name -> foreign name,
        and the foreign names no row matched (sorted).

    Raises:
        CheckpointMismatchError: two foreign tensors map onto the same name of ours.
    """
    ign = [re.compile(p) for p in ignored]
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    unmatched: list[str] = []
    for name, value in foreign.items():
        if any(p.fullmatch(name) for p in ign):
            continue
        for row in rows:
            m = row.regex.fullmatch(name)
            if m is None:
                continue
            ours = _FMT.format(row.template, **m.groupdict())
            if ours in out:
                raise CheckpointMismatchError(f"both {origin[ours]!r} and {name!r} map onto {ours!r}")
            out[ours] = row.transform(np.asarray(value))
            origin[ours] = name
            break
        else:
            unmatched.append(name)
    return out, origin, sorted(unmatched)


def target_shapes(target: torch.nn.Module | Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every parameter and persistent buffer of ``target``.

    ``target`` is a module, a state dict (name -> tensor) or a mapping name -> shape.
    """
    if isinstance(target, torch.nn.Module):
        target = target.state_dict()
    out = {}
    for k, v in target.items():
        out[k] = tuple(v.shape) if hasattr(v, "shape") else tuple(v)  # type: ignore[arg-type]
    return out


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """numpy -> torch without changing the shape (``np.ascontiguousarray`` would make 0-d arrays 1-d)."""
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, order="C", copy=True)
    return torch.from_numpy(a)


def _listing(names: Iterable[str], limit: int = 20) -> str:
    names = sorted(names)
    head = ", ".join(names[:limit])
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)}: {head}{more}"


def check_against_target(converted: Mapping[str, np.ndarray], target: Mapping[str, tuple[int, ...]], *,
                         source: str, unmatched: Sequence[str] = (), origin: Mapping[str, str] | None = None,
                         strict: bool = True) -> dict[str, torch.Tensor]:
    """Check a converted state dict against the target and return torch tensors.

    ``num_batches_tracked`` buffers the source lacks are created as int64 zeros.

    Args:
        converted: our name -> array, from :func:`apply_rows`.
        target: our name -> shape of every parameter/buffer of the target model.
        source: text naming the checkpoint, used in error messages.
        unmatched: foreign names no row converted.
        origin: our name -> foreign name (for messages).
        strict: if False, leftovers on either side are dropped silently (shapes of
            the keys both sides have must still agree).

    Returns:
        our name -> tensor, exactly the target's keys when ``strict``.

    Raises:
        CheckpointMismatchError: leftovers (strict) or shape mismatches; the message
            lists the first 20 offending keys on each side and their count.
    """
    origin = origin or {}
    out: dict[str, torch.Tensor] = {}
    problems = []
    shape_bad = []
    for k, v in converted.items():
        if k in target:
            if tuple(v.shape) != tuple(target[k]):
                shape_bad.append(f"{k} (from {origin.get(k, k)}): checkpoint {list(v.shape)} vs model "
                                 f"{list(target[k])}")
            else:
                out[k] = to_tensor(v)
    extra = [origin.get(k, k) for k in converted if k not in target] + list(unmatched)
    for k, shape in target.items():
        if k not in out and k.endswith("num_batches_tracked") and k not in converted:
            out[k] = torch.zeros(shape, dtype=torch.int64)
    missing = [k for k in target if k not in out and k not in {s.split(" ")[0] for s in shape_bad}]
    if shape_bad:
        problems.append(f"shape mismatches {_listing(shape_bad)}")
    if strict and extra:
        problems.append(f"checkpoint entries not used by the model {_listing(extra)}")
    if strict and missing:
        problems.append(f"model entries missing from the checkpoint {_listing(missing)}")
    if problems:
        hint = "" if not strict or shape_bad else " (pass strict=False / --non-strict to load anyway)"
        raise CheckpointMismatchError(f"{source} does not fit the model{hint}:\n  " + "\n  ".join(problems))
    return out
