"""The semantic K-Net family (issue 13): mmseg decode heads + K-Net's iterative kernel update head."""

from kmax_deeplab.modeling.knet_semantic.model import KNetSemantic, build_knet_semantic

__all__ = ["KNetSemantic", "build_knet_semantic"]
