"""In-training panoptic validation: predict the val split, PQ merged across ranks.

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
