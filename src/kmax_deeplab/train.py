"""``python -m kmax_deeplab.train`` / ``torchrun --nproc-per-node N -m kmax_deeplab.train``.

Same options as ``kmax train`` (one argparse builder); torchrun's ``LOCAL_RANK`` /
``WORLD_SIZE`` environment selects distributed training (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from kmax_deeplab.commands.train import DESCRIPTION, add_train_arguments, run
from kmax_deeplab.errors import debug_enabled, run_command


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and train; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m kmax_deeplab.train", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(lambda: run(args), prog="kmax train", debug=debug_enabled(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
