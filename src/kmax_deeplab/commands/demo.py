"""``kmax demo``: the embedded default (what ``make demo`` runs); see :mod:`kmax_deeplab.engine.demo`."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Everything on bundled data, no download, CPU only: generate a synthetic panoptic dataset
(textured sky/ground/wall stuff, overlapping disc/square/triangle/star things) in
COCO-panoptic format with an overview picture; train the synthetic/kmax_tiny model from
scratch; evaluate PQ on the synthetic validation split; write predictions and overlays;
then run the prediction path on two bundled real COCO photos (the synthetic model is not a
COCO model: those labels are meaningless, the point is the path)."""


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    from kmax_deeplab.engine.demo import run_demo

    try:
        run_demo(args.output, iters=args.iters, quick=args.quick, num_train=args.num_train,
                 num_val=args.num_val, seed=args.seed, progress=not args.no_progress)
    except ValueError as e:
        from kmax_deeplab.errors import format_error

        print(format_error(e, "kmax demo"), file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``kmax demo`` to the ``kmax`` parser."""
    from kmax_deeplab.engine import demo as d

    p = subparsers.add_parser("demo", prog="kmax demo", help="run the embedded demo (no download)",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_output", metavar="DIR",
                   help="output folder: DIR/data (dataset), DIR/overview.png, DIR/train (run), "
                        "DIR/val_predictions, DIR/val_overlays.png, DIR/coco_sample_predictions "
                        "(default: demo_output)")
    p.add_argument("--iters", type=int, default=None, metavar="N",
                   help=f"training steps (default: {d.DEMO_ITERS}; {d.QUICK_ITERS} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"a seconds-long run ({d.QUICK_NUM_TRAIN} train / {d.QUICK_NUM_VAL} val "
                        "images, a couple of steps) that exercises every stage; its PQ means nothing")
    p.add_argument("--num-train", type=int, default=None, metavar="N",
                   help=f"training images to generate (default: {d.DEMO_NUM_TRAIN})")
    p.add_argument("--num-val", type=int, default=None, metavar="N",
                   help=f"validation images to generate (default: {d.DEMO_NUM_VAL})")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="dataset and training seed; the same seed gives the same data (default: 0)")
    p.add_argument("--no-progress", action="store_true",
                   help="log lines instead of a progress bar")
    p.set_defaults(func=run)
