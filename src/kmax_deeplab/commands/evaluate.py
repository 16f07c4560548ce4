"""``kmax evaluate``: panoptic quality (as panopticapi / cityscapesScripts), mIoU and AP
of COCO-panoptic prediction files; a thin layer over
:func:`kmax_deeplab.evaluation.evaluate_files`."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from kmax_deeplab.evaluation import evaluate_files
    from kmax_deeplab.evaluation import report
    from kmax_deeplab.evaluation.panoptic_io import categories_by_id
    from kmax_deeplab.fileio import atomic_write_text

    use_train_id = {"auto": None, "train": True, "label": False}[args.cityscapes_ids]
    # Bad input raises PanopticEvaluationError naming the image and segment; the CLI error
    # policy (kmax_deeplab.errors) prints it as one line, exit code 1 (--debug: traceback).
    results = evaluate_files(
        args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
        dataset=args.dataset, categories=args.categories, use_train_id=use_train_id,
        semantic=args.miou, instance=args.ap, num_workers=args.workers,
        progress=not args.no_progress, strict_void=args.strict_void,
    )
    cats = categories_by_id(results["categories"])
    pq = results["panoptic"]
    if args.per_class:
        print(report.format_per_class_table(pq, cats))
        print()
    print(report.format_pq_table(pq))
    if args.miou:
        print(report.format_semantic(results["semantic"]))
    if args.ap:
        print(report.format_instance(results["instance"]))
    if args.output:
        atomic_write_text(args.output, json.dumps(_jsonable(results), indent=2, sort_keys=False) + "\n")
        print(f"results written to {args.output}")
    return 0


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    return obj


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        prog="kmax evaluate",
        help="PQ/SQ/RQ (panopticapi-identical), mIoU and AP of COCO-panoptic predictions",
        description="Evaluate COCO-panoptic predictions (JSON + PNG folder) against ground truth "
                    "with exactly the official panopticapi / cityscapesScripts PQ rules. Prints the "
                    "All/Things/Stuff table in percent; exit code 1 on bad input.",
    )
    p.add_argument("--gt-json", required=True, help="ground-truth COCO-panoptic JSON")
    p.add_argument("--gt-folder", default=None,
                   help="folder of ground-truth PNGs (default: --gt-json without .json)")
    p.add_argument("--pred-json", required=True, help="prediction COCO-panoptic JSON")
    p.add_argument("--pred-folder", default=None,
                   help="folder of predicted PNGs (default: --pred-json without .json)")
    p.add_argument("--dataset", choices=("coco", "cityscapes", "ade20k", "custom"), default="coco",
                   help="where categories come from when the GT JSON has none: 'cityscapes' uses the "
                        "19 evaluated Cityscapes classes (default: coco, i.e. the GT JSON's)")
    p.add_argument("--cityscapes-ids", choices=("auto", "train", "label"), default="auto",
                   help="Cityscapes category ids: train ids (createPanopticImgs --use-train-id) or "
                        "label ids; auto: train ids when the GT JSON name ends in _trainId")
    p.add_argument("--categories", default=None,
                   help="JSON file with the categories (a list, or a dict with 'categories'); "
                        "overrides the GT JSON's")
    p.add_argument("--per-class", action="store_true", help="also print the per-class PQ table")
    p.add_argument("--miou", action="store_true", help="also compute mIoU and pixel accuracy")
    p.add_argument("--ap", action="store_true",
                   help="also compute COCO segm AP of thing segments (predictions need 'score')")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: all CPUs; 0 = in this process)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--strict-void", action="store_true",
                   help="a prediction listing segment id 0 (VOID in panoptic PNGs) is an error "
                        "(default: scored as a segment, as panopticapi does, with a warning)")
    p.add_argument("--output", default=None, help="write all results as JSON here (atomically)")
    p.set_defaults(func=run)
