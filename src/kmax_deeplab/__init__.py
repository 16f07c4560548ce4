"""kmax-deeplab: mask-transformer panoptic segmentation (kMaX-DeepLab first) in PyTorch.

The package follows the layout of ``DESIGN.md``: ``data`` (datasets, transforms),
``modeling`` (backbones, layers, the model families and their table ``modeling/families.py``,
post-processing), ``losses``, ``evaluation`` (PQ/SQ/RQ, mIoU, AP), ``engine`` (trainer,
predictor), ``checkpoints`` (official checkpoint importers, model zoo) and ``cli`` (the
``kmax`` command). Imports point down: nothing below ``engine`` imports ``engine``, ``config``
or ``cli``.

Entry points: :func:`build_model` (any family, from a preset, ``Config``, YAML file or native
checkpoint folder) and :func:`load_config`.
"""

__version__ = "0.1.0"


def build_model(source, *, overrides=(), weights=None):
    """Build a model from a preset, ``Config``, YAML file or native folder (:func:`kmax_deeplab.api.build_model`)."""
    from kmax_deeplab.api import build_model as _build

    return _build(source, overrides=overrides, weights=weights)


def load_config(source, overrides=()):
    """A ``Config`` from a preset, YAML file, native folder or ``Config`` (:func:`kmax_deeplab.api.load_config`)."""
    from kmax_deeplab.api import load_config as _load

    return _load(source, overrides)


__all__ = ["__version__", "build_model", "load_config"]
