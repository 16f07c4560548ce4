"""``kmax demo``: the embedded default, on bundled (synthetic) data, no download.

Stage 1 (this module): write the synthetic shapes dataset and an overview picture.
Later stages (training, evaluation, prediction on the same data) append to :func:`run_demo`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def prepare_demo_data(output: str | Path, num_train: int = 200, num_val: int = 40, seed: int = 0,
                      image_size: int = 128, overview_samples: int = 8) -> dict[str, Any]:
    """Write the synthetic dataset under ``output/data`` and ``output/overview.png``.

    Returns:
        ``{"data_root", "train_json", "val_json", "overview", "meta"}``; ``data_root`` is
        the ``DataConfig.root`` for the ``synthetic/kmax_tiny`` preset.
    """
    from kmax_deeplab.data.catalog import get_dataset_meta
    from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
    from kmax_deeplab.data.synthetic import write_synthetic_dataset
    from kmax_deeplab.visualize import dataset_overview

    output = Path(output)
    root = output / "data"
    jsons = write_synthetic_dataset(root, num_train, num_val, image_size=image_size, seed=seed)
    meta = get_dataset_meta("synthetic")
    ds = COCOPanopticDataset(root / "train" / "images", jsons["train"], root / "train" / "panoptic", meta)
    n = min(overview_samples, len(ds))
    overview = dataset_overview((ds[i] for i in range(n)), meta, output / "overview.png", columns=2)
    return {"data_root": root, "train_json": jsons["train"], "val_json": jsons["val"],
            "overview": overview, "meta": meta}


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run every demo stage; returns what each stage produced (stage 1: the data)."""
    data = prepare_demo_data(args.output, args.num_train, args.num_val, args.seed)
    print(f"[demo] synthetic dataset: {args.num_train} train / {args.num_val} val images "
          f"under {data['data_root']}")
    print(f"[demo]   train: {data['train_json']}")
    print(f"[demo]   val:   {data['val_json']}")
    print(f"[demo] overview of training samples with their panoptic labels: {data['overview']}")
    return {"data": data}


def run(args: argparse.Namespace) -> int:
    if args.num_train < 1 or args.num_val < 0:
        print("kmax demo: --num-train must be >= 1 and --num-val >= 0", file=sys.stderr)
        return 2
    run_demo(args)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", prog="kmax demo",
        help="run the embedded demo on generated synthetic data (no download)",
        description="Generate a synthetic panoptic dataset (textured sky/ground/wall stuff and "
                    "overlapping disc/square/triangle/star things) in COCO-panoptic format, "
                    "and an overview picture of samples with their panoptic colouring.")
    p.add_argument("--output", default="demo_output", metavar="DIR",
                   help="output folder; the dataset goes to DIR/data, the picture to "
                        "DIR/overview.png (default: demo_output)")
    p.add_argument("--num-train", type=int, default=200, metavar="N",
                   help="training images to generate (default: 200)")
    p.add_argument("--num-val", type=int, default=40, metavar="N",
                   help="validation images to generate (default: 40)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed; the same seed gives byte-identical files (default: 0)")
    p.set_defaults(func=run)
