"""MaX-DeepLab (Wang et al., CVPR 2021) as deeplab2 builds it (spec ``max_deeplab.md``)."""

from kmax_deeplab.modeling.max_deeplab.model import MaXDeepLab, build_max_deeplab, max_deeplab_encoder

__all__ = ["MaXDeepLab", "build_max_deeplab", "max_deeplab_encoder"]
