"""Pair ground-truth and predicted segments of one image: the shared core of PQ,
mIoU and AP.

Instead of panopticapi's ``np.unique`` over 64-bit ``gt * 256³ + pred`` pair ids (a
sort of every pixel), segment ids are mapped to dense row/column indices through a
lookup table and the intersection matrix is one ``np.bincount`` over
``row * n_cols + col``. Rows/columns: 0 = an id not in ``segments_info`` (must stay
empty), ``1..n`` = listed segments in ``segments_info`` order, ``n + 1`` = unlisted
id 0 (VOID).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from kmax_deeplab.evaluation.errors import PanopticEvaluationError

__all__ = ["SegmentPairing", "pair_segments"]

_LUT_SIZE = 1 << 24  # every RGB-encoded id is below 256³
_LUT: np.ndarray | None = None  # per process; zero outside the calls that fill it


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


def _dense_index(ids: np.ndarray, segments: Sequence[dict]) -> tuple[np.ndarray, int]:
    """Map ``[H, W]`` ids to dense indices; returns (index map, row of id 0)."""
    global _LUT
    listed = [s["id"] for s in segments]
    n = len(listed)
    if n + 2 > np.iinfo(np.uint16).max:
        raise PanopticEvaluationError(f"too many segments ({n}) in one image")
    void_row = n + 1
    values = np.arange(1, n + 1, dtype=np.uint16)
    keys = np.asarray(listed, dtype=np.int64) if n else np.zeros(0, np.int64)
    if 0 in listed:
        void_row = listed.index(0) + 1
    max_id = int(ids.max()) if ids.size else 0
    if max_id < _LUT_SIZE and (n == 0 or (keys.min() >= 0)):
        if _LUT is None:
            _LUT = np.zeros(_LUT_SIZE, dtype=np.uint16)  # lazily zeroed pages
        lut = _LUT
        ok = keys < _LUT_SIZE
        try:
            lut[0] = void_row
            lut[keys[ok]] = values[ok]
            index = np.take(lut, ids)
        finally:
            lut[0] = 0
            lut[keys[ok]] = 0
        return index, void_row
    # Rare path (ids >= 2^24 from 16/32-bit PNGs or in-memory maps): sorted search.
    order = np.argsort(keys, kind="stable")
    skeys = keys[order]
    pos = np.searchsorted(skeys, ids).clip(0, max(n - 1, 0))
    found = (skeys[pos] == ids) if n else np.zeros(ids.shape, bool)
    index = np.where(found, values[order][pos] if n else 0, 0).astype(np.uint16)
    index[(ids == 0) & ~found] = void_row
    return index, void_row


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
    return list(segments)


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
        PanopticEvaluationError: GT lists id 0 (VOID); size mismatch; an id in a PNG but not in its
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
    g_idx, g_void = _dense_index(gt_panoptic, gt_segments)
    p_idx, _ = _dense_index(pred_panoptic, pred_segments)
    rg, rp = len(gt_segments) + 2, len(pred_segments) + 2
    # [H, W] row and column -> [H*W] flat cell index of the [Rg, Rp] matrix.
    flat = g_idx.astype(np.intp).ravel()
    flat *= rp
    flat += p_idx.ravel()
    counts = np.bincount(flat, minlength=rg * rp).reshape(rg, rp).astype(np.int64, copy=False)
    _sanity(counts, gt_panoptic, gt_segments, g_idx, "ground truth", image_id)
    _sanity(counts.T, pred_panoptic, pred_segments, p_idx, "prediction", image_id)
    return SegmentPairing(
        counts=counts,
        gt_segments=gt_segments,
        pred_segments=pred_segments,
        gt_void_row=g_void,
        gt_index=g_idx if keep_maps else None,
        pred_index=p_idx if keep_maps else None,
    )


def _sanity(counts: np.ndarray, ids: np.ndarray, segments: list, index: np.ndarray,
            what: str, image_id: Any) -> None:
    """Official consistency checks between one PNG and its ``segments_info``."""
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
