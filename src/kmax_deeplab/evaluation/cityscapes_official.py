"""Cityscapes instance AP and mIoU computed by cityscapesScripts itself.

The Cityscapes benchmark numbers (e.g. kMaX-DeepLab's 44.0 AP and 83.5 mIoU) come from
cityscapesScripts' ``evaluation/evalInstanceLevelSemanticLabeling.py`` and
``evalPixelLevelSemanticLabeling.py``. Their rules differ from COCO's AP and from a
train-id confusion matrix (instances below 100 px, matching against GT groups and
VOID, classes scored in label-id space with ``ignoreInEval`` rows dropped from the
false positives, NaN classes left out of the mean), so instead of re-implementing them
we write a panoptic prediction in the benchmark's submission format and run those two
modules as a library:

* instance: per image ``<image_id>_pred.txt`` with one line ``masks/<image_id>_<k>.png
  <label id> <score>`` per predicted *thing* segment, and that binary mask PNG;
* pixel: per image ``<image_id>_pred_labelIds.png``, the label id of each pixel's
  segment (0 = unlabeled where the prediction is VOID, which counts as a miss).

Ground truth is the official ``gtFine/<split>`` folder (``*_gtFine_instanceIds.png``,
``*_gtFine_labelIds.png``, searched recursively). Needs the ``[cityscapes]`` extra.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from kmax_deeplab.evaluation.cityscapes import CITYSCAPES_CLASSES
from kmax_deeplab.evaluation.errors import PanopticEvaluationError
from kmax_deeplab.evaluation.panoptic_io import load_panoptic_json, read_panoptic_png, resolve_folder

__all__ = ["cityscapes_scripts_compat", "evaluate_cityscapes_official", "guess_prediction_ids",
           "write_cityscapes_predictions"]

_LABEL_IDS = {lid for _, lid, _, _ in CITYSCAPES_CLASSES}


def guess_prediction_ids(annotations: Sequence[dict]) -> bool:
    """``True`` when the predictions' ``category_id`` are train ids (0..18).

    Label ids (7..33) are taken whenever every id is one of the 19 evaluated label ids
    (the library's own predictions use them); otherwise train ids.
    """
    ids = {s["category_id"] for a in annotations for s in a.get("segments_info", ())}
    return not ids <= _LABEL_IDS


def _stem(image_id: Any) -> str:
    name = str(image_id)
    for suffix in ("_leftImg8bit", "_gtFine"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def write_cityscapes_predictions(
    pred_json: dict, pred_folder: str | os.PathLike, out_dir: str | os.PathLike, *,
    use_train_id: bool, instance: bool = True, semantic: bool = True,
) -> dict[str, dict[str, Path]]:
    """Write COCO-panoptic predictions in cityscapesScripts' submission formats.

    Args:
        pred_json: prediction JSON (``annotations`` with ``image_id`` such as
            ``frankfurt_000000_000294`` (``_leftImg8bit`` is stripped), ``file_name``,
            ``segments_info`` with ``category_id`` and, for things, ``score``).
        pred_folder: folder of the predicted panoptic PNGs.
        out_dir: where ``instance/`` and ``pixel/`` are written.
        use_train_id: ``category_id`` are train ids (else label ids).

    Returns:
        ``{image: {"instance": txt path, "pixel": png path}}``.

    Raises:
        PanopticEvaluationError: an unknown category, a thing segment without
            ``score``, an unreadable PNG (named).
    """
    to_label = {(tid if use_train_id else lid): lid for _, lid, tid, _ in CITYSCAPES_CLASSES}
    things = {lid for _, lid, _, th in CITYSCAPES_CLASSES if th}
    out_dir = Path(out_dir)
    (out_dir / "instance" / "masks").mkdir(parents=True, exist_ok=True)
    (out_dir / "pixel").mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Path]] = {}
    for ann in pred_json["annotations"]:
        image = _stem(ann["image_id"])
        ids = read_panoptic_png(Path(pred_folder) / ann["file_name"], image_id=ann["image_id"])
        lut_ids, lut_labels, lines = [], [], []
        for k, s in enumerate(ann["segments_info"]):
            lid = to_label.get(s["category_id"])
            if lid is None:
                raise PanopticEvaluationError(
                    f"image {ann['image_id']!r}: segment {s['id']} has category_id {s['category_id']!r}, "
                    f"not a Cityscapes {'train' if use_train_id else 'label'} id of the 19 classes")
            lut_ids.append(int(s["id"]))
            lut_labels.append(lid)
            if instance and lid in things:
                if "score" not in s:
                    raise PanopticEvaluationError(
                        f"image {ann['image_id']!r}: thing segment {s['id']} has no 'score' (needed for AP)")
                mask_name = f"masks/{image}_{k}.png"
                Image.fromarray(((ids == s["id"]) * 255).astype(np.uint8)).save(out_dir / "instance" / mask_name)
                lines.append(f"{mask_name} {lid} {float(s['score'])!r}\n")
        entry = {}
        if instance:
            txt = out_dir / "instance" / f"{image}_pred.txt"
            txt.write_text("".join(lines))
            entry["instance"] = txt
        if semantic:
            label_map = np.zeros(ids.shape, np.uint8)  # 0: unlabeled where VOID
            for sid, lid in zip(lut_ids, lut_labels):
                label_map[ids == sid] = lid
            png = out_dir / "pixel" / f"{image}_pred_labelIds.png"
            Image.fromarray(label_map).save(png)
            entry["pixel"] = png
        written[image] = entry
    return written


def _in1d(ar1, ar2, assume_unique=False, invert=False):
    """``np.in1d`` (removed in numpy 2.4), which cityscapesScripts 2.3 still calls."""
    return np.isin(np.asarray(ar1).ravel(), ar2, assume_unique=assume_unique, invert=invert)


def _write_dict_to_json(dict_name, file_name):
    """cityscapesScripts' ``writeDict2JSON`` that also writes numpy scalars (numpy 2
    counts are ``np.int64``, which its ``o.__dict__`` fallback cannot serialise)."""
    import json

    def default(o):
        return o.item() if isinstance(o, np.generic) else o.__dict__

    with open(file_name, "w") as f:
        f.write(json.dumps(dict_name, default=default, sort_keys=True, indent=4))


@contextlib.contextmanager
def cityscapes_scripts_compat():
    """Run cityscapesScripts 2.3's evaluation modules under numpy 2.

    Only two compatibility patches, both undone on exit: ``np.in1d`` (removed in numpy
    2.4) as ``np.isin(...).ravel()``, and the modules' ``writeDict2JSON`` (their debug
    and cache files ``matches.json`` / ``gtInstances.json``) made to write numpy
    scalars. The evaluation arithmetic is untouched.
    """
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as inst_eval
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as pix_eval

    shim = not hasattr(np, "in1d")
    if shim:
        np.in1d = _in1d
    saved = [(m, m.writeDict2JSON) for m in (inst_eval, pix_eval)]
    for m, _ in saved:
        m.writeDict2JSON = _write_dict_to_json
    try:
        yield
    finally:
        for m, f in saved:
            m.writeDict2JSON = f
        if shim:
            del np.in1d


@contextlib.contextmanager
def _official(work: Path):
    """cwd = ``work`` (evalInstanceLevel writes ``matches.json`` there), prints silenced,
    ``printError``'s ``sys.exit`` turned into our error, numpy-2 compatibility."""
    old = os.getcwd()
    os.chdir(work)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), cityscapes_scripts_compat():
            yield
    except SystemExit:
        lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("ERROR")]
        raise PanopticEvaluationError(
            f"cityscapesScripts: {lines[-1][7:] if lines else 'evaluation failed'}") from None
    finally:
        os.chdir(old)


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def evaluate_cityscapes_official(
    gt_dir: str | os.PathLike,
    pred_json_file: str | os.PathLike,
    pred_folder: str | os.PathLike | None = None,
    *,
    use_train_id: bool | None = None,
    instance: bool = True,
    semantic: bool = True,
    work_dir: str | os.PathLike | None = None,
) -> dict:
    """Cityscapes instance AP and pixel mIoU of panoptic predictions, by cityscapesScripts.

    Args:
        gt_dir: the ``gtFine/<split>`` folder (``<city>/*_gtFine_instanceIds.png`` and
            ``*_gtFine_labelIds.png``); every GT image there needs a prediction.
        pred_json_file: COCO-panoptic prediction JSON (see :func:`write_cityscapes_predictions`).
        pred_folder: its PNG folder (default: the JSON path without ``.json``).
        use_train_id: prediction ``category_id`` space (``None``: :func:`guess_prediction_ids`).
        instance: compute AP / AP50 (``evalInstanceLevelSemanticLabeling``).
        semantic: compute IoU / iIoU (``evalPixelLevelSemanticLabeling``).
        work_dir: keep the written submission files here (default: a temporary folder).

    Returns:
        ``{"instance": {"ap", "ap50", "per_class": {name: {"ap", "ap50"}}},
        "semantic": {"miou", "iiou", "per_class_iou": {name: iou}, "per_class_iiou"},
        "num_images"}`` as fractions; ``None`` where cityscapesScripts gives NaN (a class
        with neither GT nor prediction).

    Raises:
        PanopticEvaluationError: missing GT or prediction files, bad predictions, or an
            error reported by cityscapesScripts.
    """
    try:
        from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as inst_eval
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as pix_eval
    except ImportError as exc:
        raise PanopticEvaluationError("the official Cityscapes evaluation needs cityscapesScripts: "
                                      "pip install 'kmax-deeplab[cityscapes]'") from exc
    gt_dir = Path(gt_dir)
    gt_inst = {p.name[: -len("_gtFine_instanceIds.png")]: p.resolve()
               for p in sorted(gt_dir.rglob("*_gtFine_instanceIds.png"))}
    if not gt_inst:
        raise PanopticEvaluationError(f"no *_gtFine_instanceIds.png under {gt_dir}")
    pred_json = load_panoptic_json(pred_json_file)
    pred_folder = resolve_folder(pred_json_file, pred_folder)
    if use_train_id is None:
        use_train_id = guess_prediction_ids(pred_json["annotations"])
    by_image = {_stem(a["image_id"]): a for a in pred_json["annotations"]}
    missing = sorted(set(gt_inst) - set(by_image))
    if missing:
        raise PanopticEvaluationError(
            f"no prediction for {len(missing)} ground-truth image(s) of {gt_dir}, e.g. {missing[0]!r}")
    images = sorted(gt_inst)
    sub = {"annotations": [by_image[i] for i in images]}
    with contextlib.ExitStack() as stack:
        work = Path(work_dir) if work_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        written = write_cityscapes_predictions(sub, pred_folder, work, use_train_id=use_train_id,
                                               instance=instance, semantic=semantic)
        out: dict[str, Any] = {"num_images": len(images)}
        if instance:
            args = copy.deepcopy(inst_eval.args)
            args.predictionPath = os.path.abspath(work / "instance")
            args.predictionWalk = None
            args.gtInstancesFile = str(work / "gtInstances.json")
            if os.path.exists(args.gtInstancesFile):
                os.remove(args.gtInstancesFile)  # a cache of another GT would be reused
            args.JSONOutput = False
            args.quiet = True
            args.colorized = False
            with _official(work):
                res = inst_eval.evaluateImgLists([str(written[i]["instance"].resolve()) for i in images],
                                                 [str(gt_inst[i]) for i in images], args)
            avg = res["averages"]
            out["instance"] = {
                "ap": _nan_to_none(float(avg["allAp"])), "ap50": _nan_to_none(float(avg["allAp50%"])),
                "per_class": {name: {"ap": _nan_to_none(float(v["ap"])), "ap50": _nan_to_none(float(v["ap50%"]))}
                              for name, v in avg["classes"].items()}}
        if semantic:
            gt_label = {}
            for i in images:
                p = gt_inst[i].with_name(f"{i}_gtFine_labelIds.png")
                if not p.is_file():
                    raise PanopticEvaluationError(f"{p} not found (needed for mIoU)")
                gt_label[i] = p
            args = copy.deepcopy(pix_eval.args)
            args.JSONOutput = False
            args.quiet = True
            args.colorized = False
            args.bold = args.nocol = ""
            args.evalInstLevelScore = True
            args.evalPixelAccuracy = False
            with _official(work):
                res = pix_eval.evaluateImgLists([str(written[i]["pixel"]) for i in images],
                                                [str(gt_label[i]) for i in images], args)
            names = [n for n, _, _, _ in CITYSCAPES_CLASSES]
            out["semantic"] = {
                "miou": _nan_to_none(float(res["averageScoreClasses"])),
                "iiou": _nan_to_none(float(res["averageScoreInstClasses"])),
                "per_class_iou": {n: _nan_to_none(float(res["classScores"][n])) for n in names},
                "per_class_iiou": {n: _nan_to_none(float(res["classInstScores"][n])) for n in names},
            }
    return out
