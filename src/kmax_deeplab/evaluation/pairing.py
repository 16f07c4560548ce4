"""Pair ground-truth and predicted segments of one image: the shared core of PQ,
mIoU and AP.

Instead of panopticapi's ``np.unique`` over 64-bit ``gt * 256³ + pred`` pair ids (a
sort of every pixel), the two maps are cut into runs of pixels (in raster order)
over which neither id changes; panoptic maps are piecewise constant, so a
1024x2048 pair has a few ten thousand runs instead of two million pixels. Only the
runs' ids are mapped to dense row/column indices (a lookup table for 24-bit ids,
``np.searchsorted`` on the listed ids otherwise) and the intersection matrix is one
``np.bincount`` over ``row * n_cols + col`` weighted by the run lengths (float64
sums of integers below 2^53: exact).
Rows/columns: 0 = an id not in ``segments_info`` (must stay empty), ``1..n`` =
listed segments in ``segments_info`` order, ``n + 1`` = unlisted id 0 (VOID).
"""

from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from kmax_deeplab.evaluation.errors import PanopticEvaluationError

__all__ = ["SegmentPairing", "pair_segments"]



@dataclass
class SegmentPairing:
    """Pixel counts between the GT and predicted segments of one image.

    Attributes:
        counts: ``[Rg, Rp]`` int64 intersection counts, Rg = len(gt_segments) + 2,
            Rp = len(pred_segments) + 2 (row/column layout in the module docstring).
        gt_segments, pred_segments: the ``segments_info`` lists (same order as rows/cols).
        gt_void_row: row holding the GT pixels with id 0 (a listed row when GT lists id 0).
        gt_index, pred_index: ``[H, W]`` dense row/column index per pixel; kept only when
            ``keep_maps`` (instance AP needs the masks).
    """

    counts: np.ndarray
    gt_segments: list
    pred_segments: list
    gt_void_row: int
    gt_index: np.ndarray | None = None
    pred_index: np.ndarray | None = None


_LUT_SIZE = 1 << 24  # every RGB-encoded id is below 256³
_LUT_LOCAL = threading.local()


def _lut() -> np.ndarray:
    """This thread's ``[2^24]`` uint16 id -> row table, zero between calls.

    ``np.zeros`` maps untouched pages lazily, so only the pages of ids actually
    used cost memory.
    """
    lut = getattr(_LUT_LOCAL, "lut", None)
    if lut is None:
        lut = _LUT_LOCAL.lut = np.zeros(_LUT_SIZE, dtype=np.uint16)
    return lut


def _dense_index(values: np.ndarray, segments: Sequence[dict], what: str,
                 image_id: Any) -> tuple[np.ndarray, int]:
    """Map integer ids to dense indices; returns (``uint16`` indices, row of id 0).

    Args:
        values: ``[R]`` integer ids (one per run, or per pixel).
        segments: the ``segments_info`` list; index ``i + 1`` for ``segments[i]``.
    """
    n = len(segments)
    if n + 2 > np.iinfo(np.uint16).max:
        raise PanopticEvaluationError(f"image {image_id!r}: too many {what} segments ({n})")
    listed = []
    for s in segments:
        try:
            key = int(s["id"])
            if key != s["id"]:
                raise ValueError
        except (TypeError, ValueError):
            raise PanopticEvaluationError(
                f"image {image_id!r}: {what} segment id {s['id']!r} is not an integer") from None
        listed.append(key)
    void_row = listed.index(0) + 1 if 0 in listed else n + 1
    # One exact integer type for ids and keys (int64, or uint64 for uint64 maps);
    # keys outside its range can match no pixel.
    dtype = np.uint64 if values.dtype == np.uint64 else np.int64
    info = np.iinfo(dtype)
    rows = [i + 1 for i, k in enumerate(listed) if info.min <= k <= info.max]
    keys = np.array([listed[r - 1] for r in rows], dtype=dtype)
    if values.size and values.dtype.kind in "bu" and int(values.max()) < _LUT_SIZE:
        # Every id is an RGB-encoded 24-bit id: one table lookup per value.
        lut = _lut()
        small = keys < _LUT_SIZE
        lut_keys = keys[small].astype(np.intp)
        try:
            lut[lut_keys] = np.asarray(rows, dtype=np.uint16)[small]
            index = lut.take(values)
        finally:
            lut[lut_keys] = 0
        index[(values == 0) & (index == 0)] = void_row
        return index, void_row
    values = values.astype(dtype, copy=False)
    index = np.zeros(values.shape, dtype=np.uint16)
    if keys.size:
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        pos = np.searchsorted(sorted_keys, values).clip(0, keys.size - 1)
        found = sorted_keys[pos] == values
        index[found] = np.asarray(rows, dtype=np.uint16)[order][pos[found]]
    index[(values == 0) & (index == 0)] = void_row
    return index, void_row


def _runs(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of pixels (raster order) over which neither map changes.

    Args:
        gt, pred: ``[N]`` flat id maps.

    Returns:
        ``[R]`` int64 start of each run and ``[R]`` int64 run lengths (sum N).
    """
    n = gt.size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.not_equal(gt[1:], gt[:-1])
    other = np.not_equal(pred[1:], pred[:-1])
    change |= other
    # [N-1] "pixel i+1 starts a run" -> [R] starts, pixel 0 first.
    starts = np.flatnonzero(np.concatenate(([True], change)))
    lengths = np.diff(starts, append=n)
    return starts, lengths


def _check_segments(segments: Any, what: str, image_id: Any) -> list:
    if not isinstance(segments, (list, tuple)):
        raise PanopticEvaluationError(f"image {image_id!r}: {what} segments_info must be a list")
    seen = set()
    for s in segments:
        if not isinstance(s, dict) or "id" not in s or "category_id" not in s:
            raise PanopticEvaluationError(
                f"image {image_id!r}: {what} segment {s!r} needs 'id' and 'category_id'")
        if s["id"] in seen:
            raise PanopticEvaluationError(f"image {image_id!r}: {what} segment id {s['id']} is listed twice")
        seen.add(s["id"])
        if "score" in s:
            _check_score(s["score"], s["id"], what, image_id)
    return list(segments)


def _check_score(score: Any, segment_id: Any, what: str, image_id: Any) -> None:
    """A segment's ``score`` must be a finite real number (not a string, list or bool)."""
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        raise PanopticEvaluationError(
            f"image {image_id!r}: {what} segment {segment_id} has score {score!r} "
            f"({type(score).__name__}); expected a finite number")
    if not math.isfinite(float(score)):
        raise PanopticEvaluationError(
            f"image {image_id!r}: {what} segment {segment_id} has a non-finite score {score!r}")


def pair_segments(
    gt_panoptic: np.ndarray,
    gt_segments: Sequence[dict],
    pred_panoptic: np.ndarray,
    pred_segments: Sequence[dict],
    *,
    image_id: Any = None,
    keep_maps: bool = False,
) -> SegmentPairing:
    """Count the pixels shared by every (GT segment, predicted segment) pair.

    Args:
        gt_panoptic: ``[H, W]`` integer segment ids (0 = VOID unless listed).
        gt_segments: GT ``segments_info`` (``id``, ``category_id``, ``iscrowd``, ...).
        pred_panoptic: ``[H, W]`` integer segment ids of the prediction.
        pred_segments: predicted ``segments_info`` (``id``, ``category_id``, ...).
        image_id: only used in error messages.
        keep_maps: keep the dense index maps (for mask-based metrics).

    Returns:
        The :class:`SegmentPairing`.

    Raises:
        PanopticEvaluationError: GT lists id 0 (VOID); a ``score`` that is not a finite
            number; size mismatch; an id in a PNG but not in its
            ``segments_info`` (id 0 excepted) or listed but absent from the PNG;
            duplicate ids. Messages name the image and the segment ids.
    """
    gt_segments = _check_segments(gt_segments, "ground-truth", image_id)
    if any(s["id"] == 0 for s in gt_segments):
        # panopticapi would count these pixels both as VOID and as a segment (the IoU
        # union can then be 0 and PQ infinite): reject instead of a silent wrong answer.
        raise PanopticEvaluationError(
            f"image {image_id!r}: ground-truth segments_info lists id 0, which is VOID in "
            f"panoptic ground truth")
    pred_segments = _check_segments(pred_segments, "predicted", image_id)
    gt_panoptic = np.asarray(gt_panoptic)
    pred_panoptic = np.asarray(pred_panoptic)
    if gt_panoptic.shape != pred_panoptic.shape or gt_panoptic.ndim != 2:
        raise PanopticEvaluationError(
            f"image {image_id!r}: ground-truth map {gt_panoptic.shape} and prediction "
            f"{pred_panoptic.shape} differ in size (expected two [H, W] maps)")
    for ids, what in ((gt_panoptic, "ground-truth"), (pred_panoptic, "prediction")):
        if ids.dtype.kind not in "biu":
            raise PanopticEvaluationError(
                f"image {image_id!r}: {what} map has dtype {ids.dtype}; expected integer ids")
    # [H, W] maps -> [N] raster order -> [R] runs of constant (gt, pred) ids.
    gt_flat, pred_flat = gt_panoptic.ravel(), pred_panoptic.ravel()
    starts, lengths = _runs(gt_flat, pred_flat)
    gt_run, pred_run = gt_flat[starts], pred_flat[starts]
    g_idx, g_void = _dense_index(gt_run, gt_segments, "ground-truth", image_id)
    p_idx, _ = _dense_index(pred_run, pred_segments, "predicted", image_id)
    rg, rp = len(gt_segments) + 2, len(pred_segments) + 2
    # [R] row and column -> [R] flat cell index of the [Rg, Rp] matrix.
    flat = g_idx.astype(np.intp)
    flat *= rp
    flat += p_idx
    # Weighted bincount sums integer run lengths in float64: exact below 2^53 pixels.
    counts = np.bincount(flat, weights=lengths, minlength=rg * rp).reshape(rg, rp).astype(np.int64)
    _sanity(counts, gt_run, gt_segments, g_idx, "ground truth", image_id)
    _sanity(counts.T, pred_run, pred_segments, p_idx, "prediction", image_id)
    if keep_maps:
        # [R] run indices -> [N] pixels -> [H, W].
        gt_index = np.repeat(g_idx, lengths).reshape(gt_panoptic.shape)
        pred_index = np.repeat(p_idx, lengths).reshape(pred_panoptic.shape)
    else:
        gt_index = pred_index = None
    return SegmentPairing(
        counts=counts,
        gt_segments=gt_segments,
        pred_segments=pred_segments,
        gt_void_row=g_void,
        gt_index=gt_index,
        pred_index=pred_index,
    )


def _sanity(counts: np.ndarray, ids: np.ndarray, segments: list, index: np.ndarray,
            what: str, image_id: Any) -> None:
    """Official consistency checks between one PNG and its ``segments_info``.

    ``ids``/``index``: ``[R]`` ids and dense indices of the runs (every pixel's id
    is its run's id).
    """
    if counts[0].any():
        unlisted = np.unique(ids[index == 0])
        raise PanopticEvaluationError(
            f"image {image_id!r}: {what} segment id(s) {unlisted[:10].tolist()} are in the PNG "
            f"but not in segments_info")
    areas = counts.sum(axis=1)[1 : len(segments) + 1]
    missing = [segments[i]["id"] for i in np.flatnonzero(areas == 0)]
    if missing:
        raise PanopticEvaluationError(
            f"image {image_id!r}: {what} segment id(s) {missing[:10]} are in segments_info "
            f"but not in the PNG")
