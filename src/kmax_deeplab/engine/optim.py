"""Moved to :mod:`kmax_deeplab.solver` (below ``engine``, so that the family table can name the
optimizer, parameter-group and schedule factories); the old names keep working."""

from kmax_deeplab.solver import (  # noqa: F401
    NO_DECAY_MODULE_KEYS,
    NO_DECAY_PARAM_KEYS,
    OPTIMIZERS,
    SCHEDULES,
    WarmupPolyLR,
    WarmupStepLR,
    backbone_rules,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    decays,
    in_module,
    lr_table,
    param_group_rule,
    warmup_poly_factor,
    warmup_step_factor,
)
