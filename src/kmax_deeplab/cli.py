"""The ``kmax`` command: one entry point with sub-commands.

``kmax predict | train | evaluate | prepare | convert | demo | info``; ``kmax <cmd> --help``
documents every option. Each sub-command lives in ``kmax_deeplab.commands.<cmd>`` and
calls a library function; this module only builds the parser and dispatches, under the
one error policy of :mod:`kmax_deeplab.errors` (an expected failure is one line on stderr and
a non-zero exit code; a traceback only with ``--debug`` or for a bug).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from kmax_deeplab import __version__
from kmax_deeplab.commands import COMMANDS
from kmax_deeplab.errors import debug_enabled, run_command

DEBUG_HELP = "print the traceback of an error (also: KMAX_DEBUG=1)"


def build_parser() -> argparse.ArgumentParser:
    """Return the ``kmax`` argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="kmax",
        description="kMaX-DeepLab panoptic segmentation: predict, train, evaluate, convert checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"kmax-deeplab {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"kmax_deeplab.commands.{name}")
        module.register(subparsers)
        # `kmax CMD --debug` as well as `kmax --debug CMD`; SUPPRESS keeps the top-level value.
        sub = subparsers.choices[name]
        if "--debug" not in sub._option_string_actions:
            sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=DEBUG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kmax`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(lambda: args.func(args), prog=f"kmax {args.command}",
                       debug=debug_enabled(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
