"""Mask-transformer losses (kMaX-DeepLab spec §2), Hungarian matching, the generic SetCriterion."""

from .common import gumbel_topk_sample, mean_over_nonzero, sampling_logits
from .criterion import (
    KMAX_FINAL_TERMS,
    KMAX_TERMS,
    MATCHING_STEPS,
    TERMS,
    KMaXCriterion,
    MatchEachOutput,
    MatchedTargets,
    MatchOnce,
    SetCriterion,
    build_criterion,
    build_matched_targets,
)
from .instance_discrimination import instance_discrimination_loss
from .max_deeplab import MAX_TERMS, MAX_WEIGHTS, MaXCriterion, max_instance_discrimination_loss
from .mask_id import mask_id_cross_entropy
from .knet import KNetCriterion, build_knet_criterion
from .matching import HungarianMatcher, ImageMatch, class_similarity, linear_assignment, mask_similarity
from .pq_style import pq_class_loss, pq_dice_loss
from .semantic import semantic_loss

__all__ = [
    "KMAX_FINAL_TERMS",
    "KMAX_TERMS",
    "MATCHING_STEPS",
    "MatchEachOutput",
    "MatchOnce",
    "SetCriterion",
    "TERMS",
    "HungarianMatcher",
    "ImageMatch",
    "KMaXCriterion",
    "MAX_TERMS",
    "MAX_WEIGHTS",
    "MaXCriterion",
    "max_instance_discrimination_loss",
    "KNetCriterion",
    "MatchedTargets",
    "build_criterion",
    "build_knet_criterion",
    "build_matched_targets",
    "class_similarity",
    "gumbel_topk_sample",
    "instance_discrimination_loss",
    "linear_assignment",
    "mask_id_cross_entropy",
    "mask_similarity",
    "mean_over_nonzero",
    "pq_class_loss",
    "pq_dice_loss",
    "sampling_logits",
    "semantic_loss",
]
