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

__all__ = ["PanopticEvaluator", "evaluate_files", "merge_shard_results", "parse_shard",
           "resolve_categories"]

DATASETS = ("coco", "cityscapes", "ade20k", "custom")
BACKENDS = ("hotcoco", "kmax")
SHARD_FORMAT = "kmax-evaluate-shard/1"


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
    backend: str = "hotcoco",
    shard: tuple[int, int] | str | None = None,
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
        num_workers: worker processes of ours (``None``: ``os.cpu_count()``; 0 or 1: in
            process); hotcoco uses its own Rust threads (``RAYON_NUM_THREADS``).
        chunk_size: images per task sent to a worker (``None``: 1-4, so that each
            worker gets at least ~8 tasks and none waits long for the last one).
        progress: tqdm progress bar over images.
        strict_void: a prediction listing segment id 0 (VOID in panoptic PNGs) is an error;
            by default it is scored as a segment, as panopticapi does, with a warning.
        progress: tqdm progress bar over images (``kmax`` backend).
        backend: ``"hotcoco"`` (default: PQ alone is computed by hotcoco, see
            :mod:`~kmax_deeplab.evaluation.hotcoco_backend`) or ``"kmax"`` (ours, the
            reference). Requests hotcoco cannot serve go to ours: mIoU or AP
            (``semantic``/``instance``: one pass of ours computes all three), a shard,
            the inputs listed in ``hotcoco_backend``, or hotcoco not installed.
            ``out["backend"]`` says which one ran.
        shard: ``(i, n)`` or ``"i/n"``: evaluate only the i-th of n contiguous slices
            of the GT images (0-based, in GT order) with ours, and add ``out["state"]``
            (the exact, mergeable statistics) for :func:`merge_shard_results`.

    Returns:
        ``{"panoptic": pq results, "semantic": ..., "instance": ..., "num_images": int,
        "categories": [...], "backend": str}`` (+ ``"shard"``, ``"state"``).

    Raises:
        PanopticEvaluationError: bad input, naming the image and segment.
        ValueError: unknown ``backend`` or a bad ``shard``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(shard, str):
        shard = parse_shard(shard)
    gt_json = load_panoptic_json(gt_json_file)
    pred_json = load_panoptic_json(pred_json_file)
    gt_dir = resolve_folder(gt_json_file, gt_folder)
    pred_dir = resolve_folder(pred_json_file, pred_folder)
    cats = resolve_categories(gt_json, gt_json_file, dataset=dataset, categories=categories,
                              use_train_id=use_train_id)
    pairs = match_annotations(gt_json, pred_json)
    check_prediction_void_ids(pairs, strict=strict_void)
    num_total = len(pairs)
    if shard is not None:
        i, n = _check_shard(shard)
        pairs = pairs[i * num_total // n : (i + 1) * num_total // n]
    if backend == "hotcoco" and not (semantic or instance or shard is not None):
        out = _evaluate_hotcoco(gt_json, pred_json, gt_dir, pred_dir, cats, pairs)
        if out is not None:
            return out
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
    out["backend"] = "kmax"
    if shard is not None:
        out["shard"] = {"format": SHARD_FORMAT, "index": shard[0], "count": shard[1],
                        "num_images_total": num_total, "gt_fingerprint": _fingerprint(gt_json),
                        "image_ids": [g.get("image_id") for g, _ in pairs]}
        out["state"] = total.state_dict()
    return out


def _fingerprint(gt_json: Mapping) -> str:
    """SHA-256 of the ordered GT image ids and file names: shards of one split agree."""
    import hashlib
    import json

    keys = [[a.get("image_id"), a.get("file_name")] for a in gt_json["annotations"]]
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()


def _evaluate_hotcoco(gt_json, pred_json, gt_dir, pred_dir, cats, pairs) -> dict | None:
    from kmax_deeplab.evaluation.hotcoco_backend import (
        hotcoco_available,
        hotcoco_pq_stats,
        hotcoco_unsupported_reason,
    )
    from kmax_deeplab.evaluation.panoptic_quality import pq_average

    if not hotcoco_available() or hotcoco_unsupported_reason(gt_json, cats) is not None:
        return None
    # Only the matched pairs, in GT order (match_annotations already checked them).
    gt_sel = {"annotations": [g for g, _ in pairs]}
    pred_sel = {"annotations": [p for _, p in pairs]}
    stats = hotcoco_pq_stats(gt_sel, pred_sel, gt_dir, pred_dir, cats)
    if stats is None:
        return None
    return {"panoptic": pq_average(stats, categories_by_id(cats)), "num_images": len(pairs),
            "categories": cats, "backend": "hotcoco"}


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0 <= i < n) into ``(i, n)``.

    Raises:
        ValueError: not of that form; the message quotes the text.
    """
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    return _check_shard((i, n))


def _check_shard(shard) -> tuple[int, int]:
    i, n = (int(v) for v in shard)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
    return i, n


def merge_shard_results(shards: Sequence[Mapping]) -> dict:
    """Combine the results of ``evaluate_files(..., shard=(i, n))`` for i = 0..n-1.

    The statistics are integer counts, confusion matrices, RLE segments and exact IoU
    partial sums (:mod:`~kmax_deeplab.evaluation.exact_sum`), so the merged numbers are
    exactly those of one run over all images, in any order of the shards.

    Args:
        shards: result dicts with ``"shard"`` and ``"state"`` (as returned, or read back
            from the JSON ``kmax evaluate --shard`` writes).

    Returns:
        The one-run result layout (``backend`` ``"kmax"``, no ``"state"``).

    Raises:
        PanopticEvaluationError: a result is not a shard, shards of different splits,
            categories or metrics, a shard given twice, or a missing shard.
    """
    if not shards:
        raise PanopticEvaluationError("no shard results to merge")
    for k, r in enumerate(shards):
        if "state" not in r or "shard" not in r:
            raise PanopticEvaluationError(f"result #{k} is not a shard result (no 'shard'/'state')")
    first = shards[0]
    n = int(first["shard"]["count"])
    cats = first["categories"]
    got: dict[int, Mapping] = {}
    for r in shards:
        i = int(r["shard"]["index"])
        if r["shard"].get("format") != SHARD_FORMAT:
            raise PanopticEvaluationError(
                f"shard {i}/{r['shard']['count']}: unknown format {r['shard'].get('format')!r} "
                f"(expected {SHARD_FORMAT})")
        if int(r["shard"]["count"]) != n or r["shard"]["num_images_total"] != first["shard"]["num_images_total"] \
                or r["shard"]["gt_fingerprint"] != first["shard"]["gt_fingerprint"]:
            raise PanopticEvaluationError(
                f"shard {i}/{r['shard']['count']} is from another split than shard "
                f"{first['shard']['index']}/{n}")
        if r["categories"] != cats:
            raise PanopticEvaluationError(f"shard {i}/{n} was evaluated with other categories")
        if (r["state"]["semantic"] is None) != (first["state"]["semantic"] is None) or \
                (r["state"]["instance"] is None) != (first["state"]["instance"] is None):
            raise PanopticEvaluationError(f"shard {i}/{n} computed other metrics (mIoU/AP) than the others")
        if i in got:
            raise PanopticEvaluationError(f"shard {i}/{n} given twice")
        got[i] = r
    missing = sorted(set(range(n)) - set(got))
    if missing:
        raise PanopticEvaluationError(f"missing shard(s) {', '.join(f'{i}/{n}' for i in missing)}")
    total = PanopticEvaluator(cats, semantic=first["state"]["semantic"] is not None,
                              instance=first["state"]["instance"] is not None)
    for i in range(n):  # GT order, as one run
        total.merge_state_dict(got[i]["state"])
    out = total.compute()
    out["categories"] = cats
    out["backend"] = "kmax"
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
