"""Moved to :mod:`kmax_deeplab.modeling.layers.sync_bn` (one ``convert_sync_batchnorm`` for the
whole package); the old import path keeps working."""

from kmax_deeplab.modeling.layers.sync_bn import GlooSyncBatchNorm, convert_sync_batchnorm  # noqa: F401
