"""Evaluation identical to the official scripts: panoptic quality (panopticapi,
cityscapesScripts), semantic mIoU and COCO segm AP from panoptic predictions."""

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
from kmax_deeplab.evaluation.semantic import SemanticAccumulator

__all__ = [
    "PanopticEvaluationError",
    "PanopticEvaluator",
    "PanopticQualityAccumulator",
    "SemanticAccumulator",
    "InstanceAPAccumulator",
    "evaluate_files",
    "merge_shard_results",
    "pq_compute",
    "pq_average",
    "read_panoptic_png",
    "rgb_to_id",
    "resolve_categories",
]
