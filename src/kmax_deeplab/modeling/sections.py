"""The model-config fields every family shares (the base of each family's ``model`` section).

It lives here, below ``config/``, so that a family's config dataclasses (e.g.
``modeling/kmax/config.py``) can extend it without importing the config package; the schema
re-exports it as :class:`kmax_deeplab.config.ModelConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """Fields every model family reads (spec ``kmax_deeplab.md`` §1 and its siblings).

    Attributes:
        meta_architecture: model family, a key of ``kmax_deeplab.modeling.families.FAMILIES``
            (``"kmax"``); it selects the classes of the ``model``, ``loss`` and
            ``postprocess`` sections.
        backbone: ``resnet50`` (torchvision/detectron2 layout), ``resnet50_deeplab2``
            (deeplab2 layout, needed for deeplab2 TF R50 checkpoints), ``convnext_tiny``,
            ``convnext_small``, ``convnext_base``, ``convnext_large`` or ``resnet_tiny``
            (tests and demo).
        backbone_drop_path: stochastic-depth rate of ConvNeXt (linearly rising).
        num_classes: C, the number of thing + stuff classes (void is extra, index C).
        num_queries: N, the number of queries (kMaX: cluster centres).
        image_size: (H, W) input size; the family's input geometry says what it means (kMaX:
            the fixed canvas, each side of the form 32k+1).
        norm: ``"BN"`` or ``"SyncBN"`` for every batch norm.
        weights: a native checkpoint folder (written by ``kmax convert``, e.g. an ImageNet
            initialisation from ``kmax convert --from imagenet``, or by ``kmax train``) whose
            weights initialise the model when a training run starts fresh (detectron2's
            ``MODEL.WEIGHTS``). Ignored on ``--resume`` (the run's checkpoint wins). Empty: the
            family's own initialisation.
    """

    meta_architecture: str = "kmax"
    backbone: str = "resnet50"
    backbone_drop_path: float = 0.0
    num_classes: int = 133
    num_queries: int = 128
    image_size: tuple[int, int] = (1281, 1281)
    norm: str = "BN"
    weights: str = ""
