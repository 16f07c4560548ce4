"""Evaluation identical to the official scripts: panoptic quality (panopticapi,
cityscapesScripts), semantic mIoU (from panoptic predictions, or from label maps as mmseg) and COCO
segm AP from panoptic predictions."""

from kmax_deeplab.evaluation.errors import PanopticEvaluationError
from kmax_deeplab.evaluation.instance import InstanceAPAccumulator
from kmax_deeplab.evaluation.panoptic_io import read_panoptic_png, rgb_to_id
from kmax_deeplab.evaluation.panoptic_quality import PanopticQualityAccumulator, pq_average, pq_compute
from kmax_deeplab.evaluation.runner import (
    PanopticEvaluator,
    evaluate_files,
    merge_shard_results,
    resolve_categories,
)
from kmax_deeplab.evaluation.semantic import SemanticAccumulator, SemSegAccumulator

__all__ = [
    "PanopticEvaluationError",
    "PanopticEvaluator",
    "PanopticQualityAccumulator",
    "SemanticAccumulator",
    "SemSegAccumulator",
    "InstanceAPAccumulator",
    "evaluate_files",
    "merge_shard_results",
    "pq_compute",
    "pq_average",
    "read_panoptic_png",
    "rgb_to_id",
    "resolve_categories",
]
