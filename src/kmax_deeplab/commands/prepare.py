"""``kmax prepare cityscapes|ade20k|coco ROOT``: raw official downloads -> the files the
library reads; a thin layer over :mod:`kmax_deeplab.data.prepare`."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from kmax_deeplab.data import prepare

    kwargs = {"splits": args.splits, "progress": not args.no_progress}
    try:
        if args.dataset == "cityscapes":
            summary = prepare.prepare_cityscapes(args.root, semantic=not args.no_semantic, **kwargs)
        elif args.dataset == "ade20k":
            summary = prepare.prepare_ade20k(args.root, semantic=not args.no_semantic, **kwargs)
        else:
            summary = prepare.prepare_coco(args.root, semantic=not args.no_semantic,
                                           instances=not args.no_instances, **kwargs)
    except prepare.PrepareError as exc:
        print(f"kmax prepare {args.dataset}: error: {exc}", file=sys.stderr)
        return 1
    for split, s in summary.items():
        extra = ""
        if "instances" in s and s["instances"]:
            extra = (f"; instances {'derived from panoptic: ' if s['instances_derived'] else 'present: '}"
                     f"{s['instances']}")
        where = f" -> {s['json']}" if s.get("json") else ""
        print(f"{args.dataset} {split}: {s['images']} images, {s['converted']} converted now, "
              f"{s['images'] - s['converted']} already done{where}{extra}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        prog="kmax prepare",
        help="convert raw Cityscapes / ADE20K / COCO downloads to the panoptic and semantic files",
        description="Convert the official downloads in ROOT to the files training and evaluation "
                    "read: cityscapes: createPanopticImgs --use-train-id output + *_labelTrainIds.png "
                    "(needs the [cityscapes] extra); ade20k: ade20k_panoptic_{train,val} (Mask2Former "
                    "layout) + annotations_detectron2 (reduce_zero_label); coco: panoptic_semseg_<split> "
                    "(133 classes, void 255) + instance annotations. Resumable: valid outputs are kept; "
                    "every file is written atomically. Exit code 1 on bad input.",
    )
    p.add_argument("dataset", choices=("cityscapes", "ade20k", "coco"))
    p.add_argument("root", help="dataset folder (Cityscapes root with gtFine/ leftImg8bit/ or their "
                                "zips; ADEChallengeData2016 or its parent; COCO root with annotations/)")
    p.add_argument("--splits", nargs="+", default=None,
                   help="splits to convert (cityscapes: train val test; ade20k: train val; coco: e.g. "
                        "val2017); default: all present")
    p.add_argument("--no-semantic", action="store_true", help="skip the semantic PNGs")
    p.add_argument("--no-instances", action="store_true", help="coco: skip the instance annotations")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)
