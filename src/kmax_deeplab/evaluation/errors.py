"""The one exception raised for bad evaluation input."""

from __future__ import annotations


class PanopticEvaluationError(ValueError):
    """Bad evaluation input: the message names the image (and segment) at fault.

    Raised for the official panopticapi sanity checks (a ground-truth image without a
    prediction, a PNG segment id missing from ``segments_info`` or the reverse, an
    unknown ``category_id``) and for problems the official code does not check or
    reports obscurely: duplicate segment ids, GT/prediction size mismatch, an
    unreadable PNG, a missing JSON field.
    """


class SemanticEvaluationError(ValueError):
    """Bad semantic-evaluation input (label maps): the message names the image at fault.

    Raised for a prediction/ground-truth size mismatch or a non-integer label map.
    """
