"""kmax-deeplab: k-means Mask Transformer (kMaX-DeepLab) panoptic segmentation in PyTorch.

The package follows the layout of ``DESIGN.md``: ``data`` (datasets, transforms),
``modeling`` (backbones, layers, kMaX heads, post-processing), ``losses``,
``evaluation`` (PQ/SQ/RQ, mIoU, AP), ``engine`` (trainer, predictor),
``checkpoints`` (official checkpoint importers, model zoo) and ``cli`` (the ``kmax``
command). Imports point down: nothing below ``engine`` imports ``engine``, ``config``
or ``cli``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
