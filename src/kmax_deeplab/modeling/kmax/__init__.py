"""kMaX-DeepLab (Yu et al., ECCV 2022): pixel decoder, k-means transformer decoder, model."""

from kmax_deeplab.modeling.kmax.model import (
    KMaXDeepLab,
    ReferenceBehaviour,
    build_kmax,
    convert_sync_batchnorm,
    reference_behaviour,
)
from kmax_deeplab.modeling.kmax.pixel_decoder import KMaXPixelDecoder, PixelDecoderOutput
from kmax_deeplab.modeling.kmax.predictor import KMaXPredictor, void_logit_offset
from kmax_deeplab.modeling.kmax.semantic_head import AuxSemanticDecoder, AuxSemanticHead
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
