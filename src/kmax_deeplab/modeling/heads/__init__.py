"""Heads shared by the mask-transformer families (kMaX-DeepLab, MaX-DeepLab).

* :class:`KMaXPredictor` (``predictor.py``): class logits, mask logits, pixel features;
* :class:`QuerySelfAttention` (``query_attention.py``): attention among the queries;
* :class:`ASPP`, :class:`AuxSemanticDecoder`, :class:`AuxSemanticHead` (``semantic_head.py``):
  the auxiliary semantic branch.

The old module paths ``modeling.kmax.predictor`` and ``modeling.kmax.semantic_head`` still work.
"""

from kmax_deeplab.modeling.heads.predictor import KMaXPredictor, void_logit_offset
from kmax_deeplab.modeling.heads.query_attention import QuerySelfAttention
from kmax_deeplab.modeling.heads.semantic_head import ASPP, AuxSemanticDecoder, AuxSemanticHead

__all__ = ["ASPP", "AuxSemanticDecoder", "AuxSemanticHead", "KMaXPredictor", "QuerySelfAttention",
           "void_logit_offset"]
