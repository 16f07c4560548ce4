"""Plain-text tables of evaluation results, in panopticapi's print format."""

from __future__ import annotations

from typing import Mapping


def format_pq_table(pq: Mapping) -> str:
    """All/Things/Stuff PQ, SQ, RQ (percent, one decimal) and N, as panopticapi prints."""
    lines = ["{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"), "-" * 38]
    for name in ("All", "Things", "Stuff"):
        r = pq[name]
        lines.append("{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(
            name, 100 * r["pq"], 100 * r["sq"], 100 * r["rq"], r["n"]))
    return "\n".join(lines)


def format_per_class_table(pq: Mapping, categories: Mapping[int, dict]) -> str:
    """Per-class PQ, SQ, RQ (percent) with TP/FP/FN, sorted by category id as
    cityscapesScripts prints it."""
    lines = ["{:20s}| {:>5s}  {:>5s}  {:>5s} {:>6s} {:>6s} {:>6s}".format(
        "Category", "PQ", "SQ", "RQ", "TP", "FP", "FN"), "-" * 62]
    for cid in sorted(pq["per_class"]):
        r = pq["per_class"][cid]
        name = str(categories[cid].get("name", cid))[:20]
        lines.append("{:20s}| {:5.1f}  {:5.1f}  {:5.1f} {:6d} {:6d} {:6d}".format(
            name, 100 * r["pq"], 100 * r["sq"], 100 * r["rq"], r["tp"], r["fp"], r["fn"]))
    return "\n".join(lines)


def format_semantic(sem: Mapping) -> str:
    """mIoU and pixel accuracy in percent."""
    return "mIoU {:.2f}  pixel accuracy {:.2f}".format(100 * sem["miou"], 100 * sem["pixel_accuracy"])


def format_instance(ap: Mapping) -> str:
    """COCO segm AP line in percent (``-`` where undefined)."""
    def f(v):
        return "  -  " if v is None else f"{100 * v:5.1f}"
    return "AP {}  AP50 {}  AP75 {}  APs {}  APm {}  APl {}".format(
        *(f(ap[k]) for k in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")))


def format_cityscapes_official(res: dict) -> str:
    """Table of :func:`~kmax_deeplab.evaluation.cityscapes_official.evaluate_cityscapes_official`
    results (percent; ``-`` where cityscapesScripts gives NaN)."""
    def pct(v):
        return "    -" if v is None else f"{100 * v:5.1f}"

    lines = []
    if "instance" in res:
        inst = res["instance"]
        lines.append(f"{'class':<15} {'AP':>6} {'AP50':>6}")
        for name, v in inst["per_class"].items():
            lines.append(f"{name:<15} {pct(v['ap']):>6} {pct(v['ap50']):>6}")
        lines.append(f"{'average':<15} {pct(inst['ap']):>6} {pct(inst['ap50']):>6}  "
                     f"(cityscapesScripts evalInstanceLevelSemanticLabeling)")
    if "semantic" in res:
        sem = res["semantic"]
        lines.append(f"mIoU {pct(sem['miou'])}  iIoU {pct(sem['iiou'])}  "
                     f"(cityscapesScripts evalPixelLevelSemanticLabeling, label ids)")
    return "\n".join(lines)
