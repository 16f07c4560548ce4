"""Panoptic copy-paste augmentation of the kMaX training recipe (spec §4).

bytedance (BD) ``PanoptickMaXDeepLabDatasetMapper.call_copypaste`` does, for every training
sample (probability 1):

1. the main image goes through the training geometry and colour jitter (scale range
   ``[min_scale, max_scale]``), padded bottom/right to the crop;
2. a second image, index ``(i + randint(0, n - 1)) % n`` of the dataset, goes through the
   same chain with the scale range halved (``0.5 * min_scale .. 0.5 * max_scale``: the
   "0.5x scale" of the spec), with its own random draws;
3. the non-crowd segments listed for the second image are shuffled and the first ``k``
   kept, ``k ~ U{0..n}``; every thing segment is kept as well. Crowd segments, unlabelled
   pixels and padding of the second image are never pasted;
4. the pixels of the kept segments overwrite the main image and its panoptic map (they also
   become real pixels where they land on the main image's padding);
5. a pasted *stuff* segment whose class is already present among the main image's
   remaining non-crowd segments is merged into that segment (BD ``stuff_class_to_idx``);
   main segments that are fully covered disappear; crowd regions of the main image keep
   their crowd flag where they are not covered;
6. the result is re-drawn when its stride-4 ground truth has ``<= 4096`` valid pixels or no
   segment (BD re-draws a whole new main image; we re-draw both crops of the same pair, so
   index ``i`` keeps its main image, as our single-image :class:`LargeScaleJitter` does).

Pasted segments keep their listed id plus :data:`PASTE_ID_OFFSET` (``256**3``, above every
COCO-panoptic id), so they never collide with the main image's ids (BD negates them;
negative ids would collide with our ``PAD_ID = -1``): ``segment_ids >= PASTE_ID_OFFSET``
marks a pasted segment and ``segment_ids - PASTE_ID_OFFSET`` is its id in the second image.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["PASTE_ID_OFFSET", "paste_panoptic", "PanopticCopyPaste"]

PASTE_ID_OFFSET = 256 ** 3
"""Added to the ids of pasted segments (COCO-panoptic ids are ``< 256**3``)."""

Record = dict[str, Any]


def _isthing(seg: dict[str, Any], record: Record) -> bool:
    if "isthing" not in seg:
        raise ValueError(f"copy-paste: segment {seg.get('id')} of {record.get('file_name')!r} has no 'isthing' "
                         "flag (records from COCOPanopticDataset.load_record carry it)")
    return bool(seg["isthing"])


def paste_panoptic(first: Record, second: Record, rng: np.random.Generator) -> Record:
    """Paste all things and a random subset of the segments of ``second`` onto ``first``.

    Both records must already be on the same canvas (after the geometric transform). See
    the module docstring for the rules (BD ``call_copypaste``, steps 3-5).

    Args:
        first: main record: ``image`` ``[H, W, 3]``, ``panoptic`` ``[H, W]``, ``segments``.
        second: record to paste from, same canvas size and image dtype; its segments need
            ``isthing``.
        rng: source of the random subset.

    Returns:
        A new record: ``first``'s metadata, the merged image and ids, ``first``'s segments
        followed by the pasted ones (``id + PASTE_ID_OFFSET``, also ``"pasted": True``)
        that were not merged, and ``valid_size`` covering the real pixels of both.

    Raises:
        ValueError: different canvas sizes or image dtypes, a segment id outside
            ``[1, PASTE_ID_OFFSET)``, or a segment without ``isthing`` in ``second``.
    """
    ids1, ids2 = first["panoptic"], second["panoptic"]
    if ids1.shape != ids2.shape or first["image"].shape != second["image"].shape:
        raise ValueError(f"copy-paste: canvas sizes differ ({ids1.shape} vs {ids2.shape}); "
                         "apply the same crop size to both records first")
    if first["image"].dtype != second["image"].dtype:
        raise ValueError(f"copy-paste: image dtypes differ ({first['image'].dtype} vs {second['image'].dtype})")
    for rec in (first, second):
        bad = [s["id"] for s in rec["segments"] if not 0 < int(s["id"]) < PASTE_ID_OFFSET]
        if bad:
            raise ValueError(f"copy-paste: {rec.get('file_name')!r} has segment ids {bad[:5]} outside "
                             f"[1, {PASTE_ID_OFFSET})")

    # Step 3: shuffle the non-crowd segments of the second image, keep the first k, plus all things.
    candidates = [s for s in second["segments"] if not s["iscrowd"]]
    order = rng.permutation(len(candidates))
    k = int(rng.integers(0, len(candidates) + 1))
    chosen = [candidates[j] for n, j in enumerate(order) if n < k or _isthing(candidates[j], second)]

    # Step 4: overwrite pixels. Pasted pixels lie inside the second's real region only.
    h2, w2 = second.get("valid_size", ids2.shape)
    region2 = ids2[:h2, :w2]
    chosen_ids = np.array(sorted(int(s["id"]) for s in chosen), dtype=np.int64)
    paste = np.isin(region2, chosen_ids) if chosen_ids.size else np.zeros(region2.shape, dtype=bool)
    id_dtype = np.result_type(ids1.dtype, np.int32)
    ids = ids1.astype(id_dtype, copy=True)
    image = first["image"].copy()
    ids[:h2, :w2][paste] = region2[paste].astype(id_dtype) + PASTE_ID_OFFSET
    image[:h2, :w2][paste] = second["image"][:h2, :w2][paste]

    # Step 5: merge pasted stuff into a remaining non-crowd main segment of the same class.
    # Presence is tested per class actually pasted (a few full-canvas comparisons, no unique()).
    first_by_class: dict[int, list[int]] = {}
    for s in first["segments"]:
        if not s["iscrowd"]:
            first_by_class.setdefault(int(s["train_id"]), []).append(int(s["id"]))
    merge_into: dict[int, int] = {}  # stuff train id -> segment id that absorbs later pasted stuff

    def target_of(train_id: int) -> int | None:
        if train_id not in merge_into:
            alive = [sid for sid in first_by_class.get(train_id, ()) if (ids == sid).any()]
            if alive:
                merge_into[train_id] = alive[0]
        return merge_into.get(train_id)

    segments = [dict(s) for s in first["segments"]]
    region = ids[:h2, :w2]
    for s in chosen:
        new_id = int(s["id"]) + PASTE_ID_OFFSET
        if not _isthing(s, second):
            tid = int(s["train_id"])
            target = target_of(tid)
            if target is not None:
                region[region == new_id] = target
                continue
            if (region == new_id).any():
                merge_into[tid] = new_id  # a later pasted segment of this class merges here
        segments.append({**s, "id": new_id, "pasted": True})

    h1, w1 = first.get("valid_size", ids1.shape)
    out = dict(first)
    out.update(image=image, panoptic=ids, segments=segments, valid_size=(max(h1, h2), max(w1, w2)))
    return out


class PanopticCopyPaste:
    """Training transform with copy-paste: ``(record, rng, second_record) -> record`` (spec §4).

    :class:`~kmax_deeplab.data.coco_panoptic.COCOPanopticDataset` sees
    ``needs_second_sample = True``, draws the second record (BD's index rule, from the same
    seeded generator) and calls ``transform(record, rng, second)``.

    Args:
        main: geometry (+ colour) transform of the main image, a
            :class:`~kmax_deeplab.data.transforms.LargeScaleJitter`; its ``sample_once`` is
            used (its own re-sampling is not: validity is checked after pasting).
        second: the same for the pasted image, with the scale range halved.
        min_valid_pixels: re-draw while the pasted result has ``<=`` this many stride-4
            valid pixels or no non-crowd segment (BD: 4096); negative disables.
        max_tries: attempts before keeping the last result (with a warning).
    """

    needs_second_sample = True

    def __init__(self, main: Any, second: Any, min_valid_pixels: int = 4096, max_tries: int = 20) -> None:
        self.main, self.second = main, second
        self.min_valid_pixels = int(min_valid_pixels)
        self.max_tries = max(1, int(max_tries))

    def __repr__(self) -> str:
        return (f"PanopticCopyPaste(main={self.main!r}, second={self.second!r}, "
                f"min_valid_pixels={self.min_valid_pixels}, max_tries={self.max_tries})")

    def __call__(self, record: Record, rng: np.random.Generator, second: Record | None = None) -> Record:
        if second is None:
            raise ValueError("PanopticCopyPaste needs a second record: call transform(record, rng, second) "
                             "(COCOPanopticDataset does this when transform.needs_second_sample is set)")
        from kmax_deeplab.data.transforms import count_valid_stride4

        out = record
        for _ in range(self.max_tries):
            out = paste_panoptic(self.main.sample_once(record, rng), self.second.sample_once(second, rng), rng)
            if self.min_valid_pixels < 0:
                return out
            valid, nseg = count_valid_stride4(out)
            if valid > self.min_valid_pixels and nseg > 0:
                return out
        warnings.warn(f"{record.get('file_name')}: no copy-paste crop with > {self.min_valid_pixels} valid "
                      f"stride-4 pixels in {self.max_tries} tries; keeping the last one",
                      RuntimeWarning, stacklevel=2)
        return out
