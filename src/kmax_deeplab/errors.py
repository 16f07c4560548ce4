"""One error policy for the ``kmax`` command line.

Every *expected* failure -- bad input, a bad config value, a device that does not exist,
an offline download, a refused checkpoint, a full or read-only disk -- ends a command with
a non-zero exit code and ONE line on stderr::

    kmax predict: error: <file or option>: <problem> (hint: <what to do>)

A traceback is printed only with ``--debug`` (or ``KMAX_DEBUG=1``) or for a real bug (an
exception that is not one of the expected kinds, e.g. ``TypeError``, ``IndexError``), which
is then reported as a bug.

Library code raises :class:`KmaxError` subclasses (or the standard ``ValueError`` /
``OSError`` family, which the policy also treats as expected); :func:`format_error` turns
any of them into the one line and :func:`run_command` applies the policy around a command.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from typing import Callable

__all__ = ["KmaxError", "ConfigError", "DeviceError", "InputError", "ChecksumError",
           "EXIT_FAILURE", "EXIT_USAGE", "EXIT_BUG", "is_expected", "format_error", "exit_code_for",
           "run_command", "debug_enabled"]

EXIT_FAILURE = 1
"""Exit code of an expected failure (bad input, refused checkpoint, full disk, ...)."""
EXIT_USAGE = 2
"""Exit code of a bad option or config value (the same code argparse uses)."""
EXIT_BUG = 3
"""Exit code of an unexpected exception (a bug in kmax-deeplab: please report it)."""

# torch's UnpicklingError advice: never repeat it to a user (it runs the pickle's code).
_DANGEROUS_ADVICE = re.compile(r"weights_only`?\s*(=|set to)\s*`?False", re.IGNORECASE)


class KmaxError(Exception):
    """An expected failure with a message naming the file or option, and an optional hint.

    Args:
        message: ``"<file or option>: <problem>"``.
        hint: what the user can do about it (shown as ``(hint: ...)``).
    """

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(KmaxError, ValueError):
    """A config value or command-line option is out of range, unknown or inconsistent."""

    exit_code = EXIT_USAGE


class DeviceError(ConfigError):
    """The requested torch device does not exist on this machine."""


class InputError(KmaxError, ValueError):
    """An input file (image, JSON, checkpoint) is unusable; the message names it."""


class ChecksumError(InputError):
    """A file's checksum (CRC32C of a TF tensor, SHA-256 of model.safetensors) is wrong."""


def debug_enabled(args: object = None) -> bool:
    """Whether tracebacks were asked for (``--debug`` on ``args`` or ``KMAX_DEBUG=1``)."""
    if getattr(args, "debug", False):
        return True
    return os.environ.get("KMAX_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _expected_types() -> tuple[type, ...]:
    types: list[type] = [KmaxError, ValueError, OSError, FloatingPointError, MemoryError, EOFError]
    try:
        import yaml

        types.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover - yaml is a core dependency
        pass
    try:
        import pickle

        types.append(pickle.UnpicklingError)  # UnsafeCheckpointError and torch's refusals
    except ImportError:  # pragma: no cover
        pass
    try:
        from kmax_deeplab.checkpoints.zoo import ZooError

        types.append(ZooError)
    except Exception:  # pragma: no cover - zoo import problems must not hide the error
        pass
    return tuple(types)


def is_expected(exc: BaseException) -> bool:
    """True for the failures a user can cause and fix (see the module docstring)."""
    if isinstance(exc, ImportError):
        return True  # an optional dependency is missing: the message names it
    return isinstance(exc, _expected_types())


def _one_line(text: str) -> str:
    """Join the lines of a message; drop every sentence advising ``weights_only=False``."""
    joined = " ".join(ln.strip() for ln in str(text).splitlines() if ln.strip())
    if _DANGEROUS_ADVICE.search(joined):
        sentences = re.split(r"(?<=[.!?])\s+", joined)
        joined = " ".join(x for x in sentences if not _DANGEROUS_ADVICE.search(x))
        joined = joined or "refused: the file may run code"
    return joined.strip()


def _describe(exc: BaseException) -> tuple[str, str | None]:
    """(message, hint) of an exception, without tracebacks or dangerous advice."""
    hint = getattr(exc, "hint", None)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"the package {exc.name!r} is not installed", f"pip install {exc.name}"
    if isinstance(exc, OSError) and not isinstance(exc, KmaxError) and exc.strerror:
        name = exc.filename if exc.filename is not None else ""
        reason = exc.strerror
        if exc.errno == errno.ENOSPC:
            hint = hint or "free some disk space or write to another folder"
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            hint = hint or "check the permissions, or write to another folder"
        msg = f"{name}: {reason}" if name else (_one_line(str(exc)) or reason)
        return msg, hint
    try:
        import yaml

        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark
            where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "YAML"
            return f"{where}: malformed YAML ({exc.problem or exc.context})", \
                "check the indentation and the 'key: value' syntax"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})", "save the file as UTF-8"
    if isinstance(exc, KeyError) and not isinstance(exc, KmaxError):
        return f"unknown key {exc.args[0]!r}" if exc.args else "unknown key", hint
    msg = _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, MemoryError):
        msg = f"out of memory{(': ' + msg) if msg != 'MemoryError' else ''}"
        hint = hint or "use a smaller batch, canvas or image"
    return msg, hint


def format_error(exc: BaseException, prog: str = "kmax") -> str:
    """The one line printed for ``exc``: ``"<prog>: error: <message> (hint: <hint>)"``."""
    msg, hint = _describe(exc)
    line = f"{prog}: error: {msg}"
    if hint:
        line += f" (hint: {hint})"
    return line


def exit_code_for(exc: BaseException) -> int:
    """The process exit code of an expected failure (:data:`EXIT_USAGE` for config errors)."""
    return int(getattr(exc, "exit_code", EXIT_FAILURE))


def run_command(func: Callable[[], int | None], *, prog: str = "kmax", debug: bool = False) -> int:
    """Run ``func`` under the error policy and return the exit code.

    * expected failures (:func:`is_expected`): one line on stderr (:func:`format_error`),
      the traceback too when ``debug``; exit code :func:`exit_code_for`;
    * ``KeyboardInterrupt``: ``"<prog>: interrupted"``, exit code 130;
    * anything else is a bug: the traceback and a request to report it, :data:`EXIT_BUG`.
    """
    try:
        return int(func() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - this is the policy
        if is_expected(exc):
            if debug:
                traceback.print_exc()
            print(format_error(exc, prog), file=sys.stderr)
            return exit_code_for(exc)
        traceback.print_exc()
        print(f"{prog}: internal error ({type(exc).__name__}): this is a bug in kmax-deeplab; "
              "please report it with the traceback above", file=sys.stderr)
        return EXIT_BUG
