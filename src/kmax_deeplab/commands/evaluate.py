"""``kmax evaluate``: panoptic quality (as panopticapi / cityscapesScripts), mIoU and AP
of COCO-panoptic prediction files; a thin layer over
:func:`kmax_deeplab.evaluation.evaluate_files`."""

from __future__ import annotations

import argparse
import json
import sys


def _run_coco_instances(args: argparse.Namespace) -> int:
    """``--instances-gt GT.json --instances-results R.json``: pycocotools mask AP."""
    from kmax_deeplab.evaluation.coco_instances import CocoInstancesError, evaluate_coco_instances
    from kmax_deeplab.fileio import atomic_write_text

    if not args.instances_results:
        return _usage_error("--instances-gt needs --instances-results (e.g. kmax predict --task instance output)")
    try:
        stats = evaluate_coco_instances(args.instances_gt, args.instances_results)
    except CocoInstancesError as e:
        print(f"kmax evaluate: {e}", file=sys.stderr)
        return 1
    print("  ".join(f"{k} {v:.1f}" for k, v in stats.items()))
    if args.output:
        atomic_write_text(args.output, json.dumps({"segm": stats}, indent=2) + "\n")
        print(f"results written to {args.output}")
    return 0


def _run_semantic(args: argparse.Namespace) -> int:
    """``--task semantic``: mmseg-identical mIoU / per-class IoU / pixel accuracy of label PNGs."""
    from kmax_deeplab.evaluation.errors import SemanticEvaluationError
    from kmax_deeplab.evaluation.semantic import evaluate_semantic_folders

    if not args.gt_folder or not args.pred_folder:
        return _usage_error("--task semantic needs --gt-folder and --pred-folder (label PNGs)")
    if args.gt_json:  # panoptic ground truth: its semantic maps (train ids, void 255)
        return _run_semantic_from_panoptic(args)
    names, reduce = None, args.reduce_zero_label
    num_classes = args.num_classes
    if args.dataset == "ade20k":
        from kmax_deeplab.data.catalog import get_dataset_meta

        names = [c["name"] for c in get_dataset_meta("ade20k").categories]
        num_classes = num_classes or len(names)
        reduce = True
    if not num_classes:
        return _usage_error("--task semantic needs --num-classes (or --dataset ade20k)")
    if names is not None and len(names) != num_classes:
        names = None
    try:
        res = evaluate_semantic_folders(args.gt_folder, args.pred_folder, num_classes,
                                        ignore_index=args.ignore_index, reduce_zero_label=reduce,
                                        class_names=names)
    except SemanticEvaluationError as exc:
        print(f"kmax evaluate: error: {exc}", file=sys.stderr)
        return 1
    return _report_semantic(args, res)


def _report_semantic(args: argparse.Namespace, res: dict) -> int:
    """Print (and with ``--output`` write) the semantic metrics."""
    from kmax_deeplab.fileio import atomic_write_text

    if args.per_class:
        print(f"{'class':<28} {'IoU':>7} {'Acc':>7}")
        for name, iou, acc in zip(res["per_class_iou"], res["IoU"], res["Acc"]):
            print(f"{str(name):<28} {100 * iou:7.2f} {100 * acc:7.2f}")
    print(f"aAcc {100 * res['aAcc']:.2f}  mIoU {100 * res['mIoU']:.2f}  mAcc {100 * res['mAcc']:.2f}  "
          f"({res['num_images']} images)")
    if args.output:
        def nan_none(v):  # strict JSON: NaN (class absent from GT and prediction) -> null
            if hasattr(v, "tolist"):
                v = v.tolist()
            if isinstance(v, list):
                return [nan_none(x) for x in v]
            return None if isinstance(v, float) and v != v else v

        out = {"semantic": {k: nan_none(v) for k, v in res.items()}}
        atomic_write_text(args.output, json.dumps(_jsonable(out), indent=2, allow_nan=False) + "\n")
        print(f"results written to {args.output}")
    return 0


def _run_semantic_from_panoptic(args: argparse.Namespace) -> int:
    """``--task semantic --gt-json PANOPTIC.json --gt-folder PANOPTIC_PNGS``: mIoU of label PNGs
    (train ids) against the semantic maps of panoptic ground truth
    (:func:`kmax_deeplab.data.panoptic_semantic.iter_semantic_labels`: void 255, crowd keeps its
    class unless ``--crowd ignore``); the prediction of image ``<stem>.<ext>`` is ``<stem>.png``."""
    import numpy as np

    from kmax_deeplab.data.catalog import get_dataset_meta, meta_from_categories
    from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
    from kmax_deeplab.data.image_io import PanopticDataError
    from kmax_deeplab.data.panoptic_semantic import iter_semantic_labels
    from kmax_deeplab.data.semantic import load_label_png
    from kmax_deeplab.evaluation.semantic import SemSegAccumulator
    from pathlib import Path

    try:
        if args.dataset == "custom":
            cats = json.loads(Path(args.gt_json).read_text(encoding="utf-8")).get("categories") or []
            meta = meta_from_categories("custom", cats)
        else:
            meta = get_dataset_meta(args.dataset)
        gt = COCOPanopticDataset(args.gt_folder, args.gt_json, args.gt_folder, meta)
        acc = SemSegAccumulator(meta.num_classes, ignore_index=args.ignore_index,
                                class_names=list(meta.class_names))
        for stem, label in iter_semantic_labels(gt, crowd=args.crowd):
            pred_path = Path(args.pred_folder) / f"{stem}.png"
            if not pred_path.is_file():
                raise PanopticDataError(f"{pred_path}: no prediction for ground truth {stem!r}")
            acc.update(load_label_png(pred_path), label.astype(np.int64), image_id=stem)
    except (PanopticDataError, OSError, ValueError) as exc:
        print(f"kmax evaluate: error: {exc}", file=sys.stderr)
        return 1
    return _report_semantic(args, acc.compute())


def run(args: argparse.Namespace) -> int:
    if getattr(args, "task", "panoptic") == "semantic":
        return _run_semantic(args)
    if getattr(args, "instances_gt", None):
        return _run_coco_instances(args)
    from kmax_deeplab.evaluation import PanopticEvaluationError, evaluate_files
    from kmax_deeplab.evaluation import report
    from kmax_deeplab.evaluation.panoptic_io import categories_by_id
    from kmax_deeplab.fileio import atomic_write_text

    from kmax_deeplab.evaluation import merge_shard_results

    use_train_id = {"auto": None, "train": True, "label": False}[args.cityscapes_ids]
    if args.merge:
        if args.shard:
            return _usage_error("--merge and --shard exclude each other")
        try:
            results = merge_shard_results([_read_shard(p) for p in args.merge])
        except PanopticEvaluationError as exc:
            print(f"kmax evaluate: error: {exc}", file=sys.stderr)
            return 1
    elif args.instance or args.cityscapes_gt:
        return _run_cityscapes_official(args, use_train_id)
    else:
        if not args.gt_json or not args.pred_json:
            return _usage_error("--gt-json and --pred-json are required (unless --merge)")
        if args.shard and not args.output:
            return _usage_error("--shard needs --output (the shard's statistics for --merge)")
        try:
            results = evaluate_files(
                args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                dataset=args.dataset, categories=args.categories, use_train_id=use_train_id,
                semantic=args.miou, instance=args.ap, num_workers=args.workers,
                progress=not args.no_progress, backend=args.backend, shard=args.shard,
                strict_void=args.strict_void,
            )
        except PanopticEvaluationError as exc:
            print(f"kmax evaluate: error: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:  # a bad --shard
            return _usage_error(str(exc))
    cats = categories_by_id(results["categories"])
    pq = results["panoptic"]
    if args.per_class:
        print(report.format_per_class_table(pq, cats))
        print()
    print(report.format_pq_table(pq))
    if results.get("semantic") is not None:
        print(report.format_semantic(results["semantic"]))
    if results.get("instance") is not None:
        print(report.format_instance(results["instance"]))
    if "shard" in results:
        sh = results["shard"]
        print(f"shard {sh['index']}/{sh['count']}: {results['num_images']} of "
              f"{sh['num_images_total']} images (combine the shards with --merge)")
    if args.output:
        atomic_write_text(args.output, json.dumps(_jsonable(results), indent=2, sort_keys=False) + "\n")
        print(f"results written to {args.output}")
    return 0


def _run_cityscapes_official(args: argparse.Namespace, use_train_id) -> int:
    """``--instance`` / ``--cityscapes-gt``: cityscapesScripts' AP and mIoU, plus PQ when
    ``--gt-json`` is given."""
    from kmax_deeplab.evaluation import PanopticEvaluationError, evaluate_files, report
    from kmax_deeplab.evaluation.cityscapes_official import evaluate_cityscapes_official
    from kmax_deeplab.fileio import atomic_write_text

    if args.dataset != "cityscapes":
        return _usage_error("--instance and --cityscapes-gt need --dataset cityscapes")
    if not args.cityscapes_gt:
        return _usage_error("--instance needs --cityscapes-gt (the gtFine/<split> folder)")
    if not (args.instance or args.miou):
        return _usage_error("--cityscapes-gt is for --instance and/or --miou")
    if not args.pred_json:
        return _usage_error("--pred-json is required")
    if args.shard or args.ap:
        return _usage_error("--shard and --ap do not combine with the official Cityscapes evaluation")
    results = {}
    try:
        if args.gt_json:
            results = evaluate_files(
                args.gt_json, args.pred_json, args.gt_folder, args.pred_folder, dataset="cityscapes",
                categories=args.categories, use_train_id=use_train_id, num_workers=args.workers,
                progress=not args.no_progress, backend=args.backend)
        results["cityscapes"] = evaluate_cityscapes_official(
            args.cityscapes_gt, args.pred_json, args.pred_folder, use_train_id=use_train_id,
            instance=args.instance, semantic=args.miou)
    except PanopticEvaluationError as exc:
        print(f"kmax evaluate: error: {exc}", file=sys.stderr)
        return 1
    if "panoptic" in results:
        print(report.format_pq_table(results["panoptic"]))
    print(report.format_cityscapes_official(results["cityscapes"]))
    if args.output:
        atomic_write_text(args.output, json.dumps(_jsonable(results), indent=2) + "\n")
        print(f"results written to {args.output}")
    return 0


def _usage_error(message: str) -> int:
    print(f"kmax evaluate: error: {message}", file=sys.stderr)
    return 2


def _read_shard(path: str) -> dict:
    from kmax_deeplab.evaluation import PanopticEvaluationError

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise PanopticEvaluationError(f"cannot read shard result {path}: {exc}") from exc
    if not isinstance(data, dict) or "state" not in data or "shard" not in data:
        raise PanopticEvaluationError(f"{path} is not a shard result of 'kmax evaluate --shard'")
    return data


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
    p.add_argument("--task", choices=("panoptic", "semantic"), default="panoptic",
                   help="semantic: mIoU / per-class IoU / pixel accuracy of label PNGs in --pred-folder "
                        "against --gt-folder, identical to mmsegmentation's definition (ignore label, "
                        "NaN for classes absent from both); with --gt-json the ground truth is a "
                        "COCO-panoptic JSON + PNG folder (--gt-folder) whose semantic maps (train ids of "
                        "--dataset, void 255) are derived, predictions <image stem>.png in train ids")
    p.add_argument("--num-classes", type=int, default=None,
                   help="--task semantic: number of classes K (default with --dataset ade20k: 150)")
    p.add_argument("--ignore-index", type=int, default=255, help="--task semantic: GT value ignored (255)")
    p.add_argument("--crowd", choices=("class", "ignore"), default="class",
                   help="--task semantic with a panoptic --gt-json: crowd segments keep their class "
                        "(Mask2Former's / kmax prepare coco's rule, default) or are ignored")
    p.add_argument("--reduce-zero-label", action="store_true",
                   help="--task semantic: GT 0 becomes the ignore value and v becomes v-1 (ADE20K; "
                        "implied by --dataset ade20k)")
    p.add_argument("--gt-json", default=None, help="ground-truth COCO-panoptic JSON (required "
                   "unless --merge)")
    p.add_argument("--instances-gt", default=None, metavar="INSTANCES_JSON",
                   help="COCO instances JSON: evaluate --instances-results (COCO results with RLE "
                        "masks, from kmax predict --task instance) with pycocotools' mask AP instead")
    p.add_argument("--instances-results", default=None, metavar="RESULTS_JSON",
                   help="COCO instance results JSON (with --instances-gt)")
    p.add_argument("--gt-folder", default=None,
                   help="folder of ground-truth PNGs (default: --gt-json without .json)")
    p.add_argument("--pred-json", default=None, help="prediction COCO-panoptic JSON (required "
                   "unless --merge)")
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
    p.add_argument("--miou", action="store_true",
                   help="also compute mIoU and pixel accuracy from the panoptic maps; with "
                        "--cityscapes-gt: cityscapesScripts' mIoU/iIoU (label ids) instead")
    p.add_argument("--ap", action="store_true",
                   help="also compute COCO segm AP of thing segments (predictions need 'score')")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: all CPUs; 0 = in this process)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--strict-void", action="store_true",
                   help="a prediction listing segment id 0 (VOID in panoptic PNGs) is an error "
                        "(default: scored as a segment, as panopticapi does, with a warning)")
    p.add_argument("--output", default=None, help="write all results as JSON here (atomically)")
    p.add_argument("--instance", action="store_true",
                   help="Cityscapes instance AP / AP50 per class by cityscapesScripts' "
                        "evalInstanceLevelSemanticLabeling (needs --dataset cityscapes, --cityscapes-gt "
                        "and segment scores); with --miou, also its evalPixelLevelSemanticLabeling "
                        "mIoU (label ids). --gt-json is then optional (adds PQ)")
    p.add_argument("--cityscapes-gt", default=None, metavar="DIR",
                   help="the official gtFine/<split> folder (*_gtFine_instanceIds.png, *_labelIds.png) "
                        "for --instance and the official --miou")
    p.add_argument("--backend", choices=("hotcoco", "kmax"), default="hotcoco",
                   help="PQ from files: hotcoco (default, Rust, panopticapi-identical; inputs where "
                        "it differs go to ours) or kmax (ours, the reference). --miou/--ap/--shard "
                        "always use ours (one pass computes all metrics)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="evaluate only the I-th of N contiguous slices of the GT images (0-based) "
                        "and write its exact statistics to --output, for --merge")
    p.add_argument("--merge", nargs="+", default=None, metavar="SHARD_JSON",
                   help="combine the --output files of all N shards: the numbers of one run")
    p.set_defaults(func=run)
