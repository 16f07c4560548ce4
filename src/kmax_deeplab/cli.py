"""The ``kmax`` command: one entry point with sub-commands.

``kmax predict | train | evaluate | prepare | convert | demo | info``; ``kmax <cmd> --help``
documents every option. Each sub-command lives in ``kmax_deeplab.commands.<cmd>`` and
calls a library function; this module only builds the parser and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from kmax_deeplab import __version__
from kmax_deeplab.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """Return the ``kmax`` argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="kmax",
        description="kMaX-DeepLab panoptic segmentation: predict, train, evaluate, convert checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"kmax-deeplab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"kmax_deeplab.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kmax`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
