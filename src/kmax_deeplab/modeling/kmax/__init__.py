"""kMaX-DeepLab (Yu et al., ECCV 2022): pixel decoder, k-means transformer decoder, model.

The heads it shares with MaX-DeepLab (predictor, query self-attention, ASPP and the auxiliary
semantic decoder) live in ``modeling/heads/``; they are re-exported here.
"""

import sys as _sys

from kmax_deeplab.modeling.heads import predictor as _predictor
from kmax_deeplab.modeling.heads import semantic_head as _semantic_head
from kmax_deeplab.modeling.heads.predictor import KMaXPredictor, void_logit_offset
from kmax_deeplab.modeling.heads.semantic_head import AuxSemanticDecoder, AuxSemanticHead
from kmax_deeplab.modeling.kmax.model import (
    KMaXDeepLab,
    ReferenceBehaviour,
    build_kmax,
    convert_sync_batchnorm,
    reference_behaviour,
)
from kmax_deeplab.modeling.kmax.pixel_decoder import KMaXPixelDecoder, PixelDecoderOutput
from kmax_deeplab.modeling.kmax.transformer_decoder import (
    KMaXTransformerDecoder,
    KMaXTransformerLayer,
    kmeans_assignment,
    kmeans_update,
)

__all__ = [
    "AuxSemanticDecoder",
    "AuxSemanticHead",
    "KMaXDeepLab",
    "KMaXPixelDecoder",
    "KMaXPredictor",
    "KMaXTransformerDecoder",
    "KMaXTransformerLayer",
    "PixelDecoderOutput",
    "ReferenceBehaviour",
    "build_kmax",
    "convert_sync_batchnorm",
    "kmeans_assignment",
    "kmeans_update",
    "reference_behaviour",
    "void_logit_offset",
]

# The shared heads moved to modeling/heads/ (issue 10); their old module paths keep working.
_sys.modules.setdefault(__name__ + ".predictor", _predictor)
_sys.modules.setdefault(__name__ + ".semantic_head", _semantic_head)
predictor = _predictor
semantic_head = _semantic_head
