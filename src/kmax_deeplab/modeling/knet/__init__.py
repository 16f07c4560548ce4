"""K-Net (Zhang et al., NeurIPS 2021): FPN necks, kernel init head, kernel update stages, model."""

from kmax_deeplab.modeling.knet.kernel_head import KernelHeadOutput, KernelInitHead, prior_bias
from kmax_deeplab.modeling.knet.kernel_update import (
    GATHER_MODES,
    KernelUpdateHead,
    KernelUpdator,
    StageOutput,
)
from kmax_deeplab.modeling.knet.model import IMAGENET_MEAN, IMAGENET_STD, SIZE_DIVISOR, KNet, build_knet
from kmax_deeplab.modeling.knet.neck import FPN, ConvGNReLU, LocalizationFPN, sine_positional_encoding

__all__ = [
    "FPN",
    "GATHER_MODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SIZE_DIVISOR",
    "ConvGNReLU",
    "KNet",
    "KernelHeadOutput",
    "KernelInitHead",
    "KernelUpdateHead",
    "KernelUpdator",
    "LocalizationFPN",
    "StageOutput",
    "build_knet",
    "prior_bias",
    "sine_positional_encoding",
]
