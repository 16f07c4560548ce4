"""One pass over (GT, prediction) image pairs computing PQ and, on request, mIoU and
instance AP; in memory (:class:`PanopticEvaluator`) or from files
(:func:`evaluate_files`, parallel over images)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kmax_deeplab.evaluation.cityscapes import cityscapes_categories, guess_uses_train_id
from kmax_deeplab.evaluation.errors import PanopticEvaluationError
from kmax_deeplab.evaluation.instance import InstanceAPAccumulator
from kmax_deeplab.evaluation.pairing import pair_segments
from kmax_deeplab.evaluation.panoptic_io import (
    categories_by_id,
    load_panoptic_json,
    match_annotations,
    read_panoptic_png,
    resolve_folder,
)
from kmax_deeplab.evaluation.panoptic_quality import PanopticQualityAccumulator
from kmax_deeplab.evaluation.semantic import SemanticAccumulator

__all__ = ["PanopticEvaluator", "evaluate_files", "resolve_categories"]

DATASETS = ("coco", "cityscapes", "ade20k", "custom")


class PanopticEvaluator:
    """PQ (always), semantic metrics and instance AP from one pairing per image.

    Args:
        categories: category dicts (``id``, ``isthing``, ``name``) or ``{id: cat}``.
        semantic: also accumulate mIoU / pixel accuracy.
        instance: also collect thing masks for COCO segm AP (predictions need ``score``).
    """

    def __init__(self, categories: Sequence[dict] | Mapping[int, dict], *, semantic: bool = False,
                 instance: bool = False):
        self.categories = categories_by_id(categories)
        self.pq = PanopticQualityAccumulator(self.categories)
        self.semantic = SemanticAccumulator(self.categories) if semantic else None
        self.instance = InstanceAPAccumulator(self.categories) if instance else None

    def update(self, gt_panoptic: np.ndarray, gt_segments_info: Sequence[dict],
               pred_panoptic: np.ndarray, pred_segments_info: Sequence[dict], *,
               image_id: Any = None) -> None:
        """Add one image: ``[H, W]`` integer id maps plus their ``segments_info``."""
        pairing = pair_segments(gt_panoptic, gt_segments_info, pred_panoptic, pred_segments_info,
                                image_id=image_id, keep_maps=self.instance is not None)
        self.pq.update_from_pairing(pairing, image_id=image_id)
        if self.semantic is not None:
            self.semantic.update_from_pairing(pairing, image_id=image_id)
        if self.instance is not None:
            self.instance.update_from_pairing(pairing, image_id=image_id)

    def merge(self, other: "PanopticEvaluator") -> "PanopticEvaluator":
        """Add ``other`` (same categories and metrics) into self; returns self."""
        self.pq.merge(other.pq)
        if self.semantic is not None:
            self.semantic.merge(other.semantic)
        if self.instance is not None:
            self.instance.merge(other.instance)
        return self

    def state_dict(self) -> dict:
        """Picklable state (for ``torch.distributed.all_gather_object``)."""
        return {
            "pq": self.pq.state_dict(),
            "semantic": None if self.semantic is None else self.semantic.state_dict(),
            "instance": None if self.instance is None else self.instance.state_dict(),
        }

    def merge_state_dict(self, state: Mapping) -> None:
        """Add the statistics of another evaluator's :meth:`state_dict`."""
        other = PanopticEvaluator(self.categories, semantic=self.semantic is not None,
                                  instance=self.instance is not None)
        other.pq.load_state_dict(state["pq"])
        if other.semantic is not None:
            other.semantic.load_state_dict(state["semantic"])
        if other.instance is not None:
            other.instance.load_state_dict(state["instance"])
        self.merge(other)

    def compute(self) -> dict:
        """``{"panoptic": ..., "semantic": ... (if on), "instance": ... (if on)}``."""
        out = {"panoptic": self.pq.compute(), "num_images": self.pq.num_images}
        if self.semantic is not None:
            out["semantic"] = self.semantic.compute()
        if self.instance is not None:
            out["instance"] = self.instance.compute()
        return out


def resolve_categories(gt_json: dict, gt_json_file: str | os.PathLike, *, dataset: str = "coco",
                       categories: Sequence[dict] | str | os.PathLike | None = None,
                       use_train_id: bool | None = None) -> list[dict]:
    """Pick the categories for an evaluation.

    Order of precedence: ``categories`` (a list or a JSON file holding a list or a dict
    with ``categories``), the GT JSON's ``categories``, and for ``dataset="cityscapes"``
    the 19 Cityscapes classes with train ids (``use_train_id``, guessed from a
    ``*_trainId.json`` name when ``None``) or label ids.

    Raises:
        PanopticEvaluationError: no categories can be found.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if isinstance(categories, (str, os.PathLike)):
        path = Path(categories)
        try:
            import json

            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PanopticEvaluationError(f"cannot read categories file {path}: {exc}") from exc
        categories = data["categories"] if isinstance(data, dict) else data
    if categories is not None:
        return list(categories)
    if gt_json.get("categories"):
        return list(gt_json["categories"])
    if dataset == "cityscapes":
        if use_train_id is None:
            use_train_id = guess_uses_train_id(gt_json_file)
        return cityscapes_categories(use_train_id)
    raise PanopticEvaluationError(
        f"{os.fspath(gt_json_file)} has no 'categories'; pass categories (--categories) "
        f"or dataset='cityscapes'")


# --------------------------------------------------------------------------- files
_WORKER: dict = {}


def _keep_freed_memory() -> None:
    """In a worker process: let glibc malloc reuse freed image buffers.

    Every image allocates several fresh multi-megabyte buffers (inflated rows,
    decoded pixels, ids); by default glibc serves each with a new ``mmap`` and
    returns it on ``free``, so every page is faulted in and zeroed again for every
    image, which costs as much as the decoding itself on a small VM. Raising the
    mmap and trim thresholds (``mallopt``) keeps freed buffers in the heap for the
    next image. Only done in our own pool workers; a no-op without glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        pass


def _init_worker(gt_folder, pred_folder, categories, semantic, instance, pool_worker=False):
    if pool_worker:
        _keep_freed_memory()
    _WORKER.update(gt_folder=gt_folder, pred_folder=pred_folder, categories=categories,
                   semantic=semantic, instance=instance)


def _evaluate_chunk(pairs: list[tuple[dict, dict]]) -> tuple[int, dict]:
    w = _WORKER
    ev = PanopticEvaluator(w["categories"], semantic=w["semantic"], instance=w["instance"])
    for gt_ann, pred_ann in pairs:
        image_id = gt_ann.get("image_id")
        for ann, what in ((gt_ann, "ground-truth"), (pred_ann, "prediction")):
            if "file_name" not in ann or "segments_info" not in ann:
                raise PanopticEvaluationError(
                    f"image {image_id!r}: {what} annotation needs 'file_name' and 'segments_info'")
        gt = read_panoptic_png(Path(w["gt_folder"]) / gt_ann["file_name"], image_id=image_id)
        pred = read_panoptic_png(Path(w["pred_folder"]) / pred_ann["file_name"], image_id=image_id)
        ev.update(gt, gt_ann["segments_info"], pred, pred_ann["segments_info"], image_id=image_id)
    return len(pairs), ev.state_dict()


def evaluate_files(
    gt_json_file: str | os.PathLike,
    pred_json_file: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
    *,
    dataset: str = "coco",
    categories: Sequence[dict] | str | os.PathLike | None = None,
    use_train_id: bool | None = None,
    semantic: bool = False,
    instance: bool = False,
    num_workers: int | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    strict_void: bool = False,
) -> dict:
    """Evaluate COCO-panoptic prediction files against GT files.

    Args:
        gt_json_file, pred_json_file: COCO-panoptic JSONs; images are matched by
            ``image_id`` (every GT image needs a prediction).
        gt_folder, pred_folder: PNG folders (default: JSON path without ``.json``).
        dataset: ``coco | cityscapes | ade20k | custom``; only changes where the
            categories come from (see :func:`resolve_categories`).
        categories: explicit categories (list or JSON file).
        use_train_id: Cityscapes id space (``None``: guess from the file name).
        semantic, instance: also compute mIoU / COCO segm AP.
        num_workers: worker processes (``None``: ``os.cpu_count()``; 0 or 1: in process).
        chunk_size: images per task sent to a worker (``None``: 1-4, so that each
            worker gets at least ~8 tasks and none waits long for the last one).
        progress: tqdm progress bar over images.
        strict_void: a prediction listing segment id 0 (VOID in panoptic PNGs) is an error;
            by default it is scored as a segment, as panopticapi does, with a warning.

    Returns:
        ``{"panoptic": pq results, "semantic": ..., "instance": ..., "num_images": int,
        "categories": [...]}``.

    Raises:
        PanopticEvaluationError: bad input, naming the image and segment.
    """
    gt_json = load_panoptic_json(gt_json_file)
    pred_json = load_panoptic_json(pred_json_file)
    gt_dir = resolve_folder(gt_json_file, gt_folder)
    pred_dir = resolve_folder(pred_json_file, pred_folder)
    cats = resolve_categories(gt_json, gt_json_file, dataset=dataset, categories=categories,
                              use_train_id=use_train_id)
    pairs = match_annotations(gt_json, pred_json)
    check_prediction_void_ids(pairs, strict=strict_void)
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    if chunk_size is None:
        chunk_size = max(1, min(4, len(pairs) // (8 * max(workers, 1))))
    chunks = [pairs[i : i + chunk_size] for i in range(0, len(pairs), chunk_size)]
    init = (str(gt_dir), str(pred_dir), cats, semantic, instance)
    total = PanopticEvaluator(cats, semantic=semantic, instance=instance)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), desc="evaluate", unit="img")
    try:
        if workers <= 1 or len(chunks) <= 1:
            _init_worker(*init)
            results = map(_evaluate_chunk, chunks)
            _consume(results, total, bar)
        else:
            with multiprocessing.get_context().Pool(min(workers, len(chunks)), _init_worker,
                                                    (*init, True)) as pool:
                _consume(pool.imap_unordered(_evaluate_chunk, chunks), total, bar)
    finally:
        if bar is not None:
            bar.close()
    out = total.compute()
    out["categories"] = cats
    return out


def check_prediction_void_ids(pairs: Sequence[tuple[dict, dict]], *, strict: bool = False) -> int:
    """Find predictions whose ``segments_info`` lists id 0 (VOID in panoptic PNGs).

    panopticapi scores such a segment like any other (deeplab2's own test predictions
    list one), so by default this only warns, naming the first image; with ``strict``
    it is an error.

    Returns:
        The number of such images.

    Raises:
        PanopticEvaluationError: ``strict`` and some prediction lists id 0.
    """
    import warnings

    bad = [gt.get("image_id") for gt, pred in pairs
           if isinstance(pred.get("segments_info"), list)
           and any(isinstance(s, dict) and s.get("id") == 0 for s in pred["segments_info"])]
    if bad and strict:
        raise PanopticEvaluationError(
            f"image {bad[0]!r}: predicted segments_info lists id 0, which is VOID in panoptic "
            f"PNGs ({len(bad)} image(s) in all); give those segments another id")
    if bad:
        warnings.warn(f"{len(bad)} prediction(s) list segment id 0 (VOID in panoptic PNGs), e.g. "
                      f"image {bad[0]!r}; scored as a segment as panopticapi does "
                      "(--strict-void makes this an error)", UserWarning, stacklevel=3)
    return len(bad)


def _consume(results, total: PanopticEvaluator, bar) -> None:
    for n, state in results:
        total.merge_state_dict(state)
        if bar is not None:
            bar.update(n)
