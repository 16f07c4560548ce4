"""In-training validation: predict the val split, PQ (panoptic) or mIoU (semantic,
:class:`SemanticValidation`) merged across ranks.

Each rank predicts images ``rank, rank + W, ...`` of the split with the inference path
of ``kmax predict`` (:class:`~kmax_deeplab.engine.predictor.Predictor`: resize longest
side, pad, forward, mask-wise merging, back to the original size), compares them with
the ground-truth PNGs in an in-memory
:class:`~kmax_deeplab.evaluation.panoptic_quality.PanopticQualityAccumulator`, and the
accumulators are merged with ``all_gather_object``, so every rank returns the same PQ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kmax_deeplab.engine.distributed import DistInfo, all_gather_object


class PanopticValidation:
    """Callable ``(model, dist) -> {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", ...}``.

    Values are percentages. The full result of the last call (``compute()`` layout with
    ``per_class``) is kept in :attr:`last_result`.

    Args:
        cfg: the run config (``model.image_size``, ``postprocess``).
        dataset: a :class:`~kmax_deeplab.data.coco_panoptic.COCOPanopticDataset` of the
            val split (only its file records and ``meta`` are used).
        max_images: evaluate only the first ``max_images`` images (None = all).
        batch_size: images per forward pass.
    """

    def __init__(self, cfg: Any, dataset: Any, *, max_images: int | None = None,
                 batch_size: int = 4) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.meta = dataset.meta
        self.max_images = max_images
        self.batch_size = batch_size
        self.last_result: dict[str, Any] = {}

    def _records(self) -> list[dict[str, Any]]:
        records = list(self.dataset.records)
        return records[: self.max_images] if self.max_images is not None else records

    @torch.no_grad()
    def __call__(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        from kmax_deeplab.engine.predictor import Predictor, load_image
        from kmax_deeplab.evaluation.panoptic_io import read_panoptic_png
        from kmax_deeplab.evaluation.panoptic_quality import PanopticQualityAccumulator

        was_training = model.training
        predictor = Predictor(model, self.cfg, meta=self.meta, device=dist.device)
        acc = PanopticQualityAccumulator(list(self.meta.categories))
        mine = self._records()[dist.rank::dist.world_size]
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start:start + self.batch_size]
            arrays = [load_image(Path(self.dataset.image_dir) / r["image_file"]) for r in chunk]
            preds = predictor.predict_arrays(arrays)
            for rec, pred in zip(chunk, preds):
                gt = read_panoptic_png(Path(self.dataset.panoptic_dir) / rec["panoptic_file"],
                                       image_id=rec["image_id"])
                acc.update(gt, rec["segments_info"], np.asarray(pred["panoptic"]),
                           pred["segments_info"], image_id=rec["image_id"])
        merged = PanopticQualityAccumulator(list(self.meta.categories))
        for state in all_gather_object(acc.state_dict()):
            merged.merge_state_dict(state)
        model.train(was_training)
        result = merged.compute()
        result["num_images"] = merged.num_images
        self.last_result = result
        out = {}
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for k in ("pq", "sq", "rq"):
                out[f"{k.upper()}{suffix}"] = 100.0 * float(result[group][k])
        return out


class SemanticValidation:
    """Callable ``(model, dist) -> {"mIoU", "mAcc", "aAcc"}`` (percentages) for a semantic model.

    Each rank predicts samples ``rank, rank + W, ...`` with the inference of ``kmax predict --task
    semantic`` (:meth:`~kmax_deeplab.engine.predictor.Predictor.predict_semantic`: the config's
    whole / sliding-window / TTA settings, at the original size), scores them against the
    sample's ``sem_seg`` train ids (255 ignored) in a
    :class:`~kmax_deeplab.evaluation.semantic.SemSegAccumulator` (mmseg's ``IoUMetric``
    definition), and the per-class areas are summed across ranks with ``all_gather_object``, so
    every rank returns the same numbers. The full result of the last call (with ``IoU`` per class
    and ``per_class_iou``) is kept in :attr:`last_result`.

    Args:
        cfg: the run config of a semantic model (``model.task == "semantic"``).
        dataset: untransformed samples through ``dataset.load(index)`` (``image`` uint8
            ``[H, W, 3]``, ``sem_seg`` int ``[H, W]`` train ids):
            :class:`~kmax_deeplab.data.semantic.SemanticSegDataset` (ADE20K, ...) or
            :class:`~kmax_deeplab.data.panoptic_semantic.PanopticSemanticDataset`.
        max_images: evaluate only the first ``max_images`` samples (None = all).
        ignore_index: the label value not scored (255).
    """

    def __init__(self, cfg: Any, dataset: Any, *, max_images: int | None = None, ignore_index: int = 255) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.max_images = max_images
        self.ignore_index = int(ignore_index)
        self.last_result: dict[str, Any] = {}

    @torch.no_grad()
    def __call__(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        from kmax_deeplab.engine.predictor import Predictor
        from kmax_deeplab.evaluation.semantic import SemSegAccumulator

        was_training = model.training
        predictor = Predictor(model, self.cfg, meta=getattr(self.dataset, "meta", None), device=dist.device)
        num_classes = int(self.cfg.model.num_classes)
        acc = SemSegAccumulator(num_classes, ignore_index=self.ignore_index)
        n = len(self.dataset) if self.max_images is None else min(len(self.dataset), self.max_images)
        for index in range(dist.rank, n, dist.world_size):
            rec = self.dataset.load(index)
            pred = predictor.predict_semantic(rec["image"])["semantic"]
            acc.update(pred, np.asarray(rec["sem_seg"]), image_id=rec.get("image_id", index))
        merged = SemSegAccumulator(num_classes, ignore_index=self.ignore_index)
        for state in all_gather_object(acc.state_dict()):
            merged.areas += np.asarray(state["areas"], dtype=np.int64).reshape(4, num_classes)
            merged.num_images += int(state["num_images"])
        model.train(was_training)
        result = merged.compute()
        self.last_result = result
        return {k: 100.0 * float(result[k]) for k in ("mIoU", "mAcc", "aAcc")}
