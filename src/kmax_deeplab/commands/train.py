"""``kmax train``: placeholder parser, replaced when the feature lands."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    print("kmax train: not available in this build yet", file=sys.stderr)
    return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="(not available yet)")
    p.set_defaults(func=run)
