"""``kmax evaluate``: placeholder parser, replaced when the feature lands."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    print("kmax evaluate: not available in this build yet", file=sys.stderr)
    return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="(not available yet)")
    p.set_defaults(func=run)
