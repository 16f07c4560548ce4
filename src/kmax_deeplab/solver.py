"""Optimizers, parameter groups and learning-rate schedules (the families' training recipes).

Model families name these factories in their row of the family table (kMaX: AdamW + warmup
+ poly; MaX-DeepLab: Adam + warmup + poly; K-Net: AdamW + warmup + step decay + clipping);
``solver.optimizer`` and ``solver.lr_schedule`` pick among them. kMaX's recipe (spec
``kmax_deeplab.md`` §4):

* AdamW, betas (0.9, 0.999), eps 1e-8 (bytedance; deeplab2 uses 1e-7: set
  ``solver.eps=1e-7``), decoupled weight decay 0.05.
* No weight decay on normalisation parameters (every batch/group/instance/layer norm,
  including our fp32 layer norms), biases, ConvNeXt layer-scale ``gamma``, relative-position
  tables (``_rpe`` modules / ``_embeddings`` parameters), cluster centres
  (``_cluster_centers``) and any ``nn.Embedding``: the bytedance ``build_optimizer`` rules.
* Backbone LR x ``backbone_lr_multiplier`` (0.1) for every parameter of the ``backbone``
  module (its name is ``backbone`` or starts with ``backbone.``; bytedance matches the substring
  ``"backbone"``, which names the same parameters in every kMaX model). Other families pass
  their own LR rules: ``(predicate(full_param_name) -> bool, multiplier)`` pairs, first match
  wins (:func:`build_param_groups`).
* Schedule (bytedance ``TF2WarmupPolyLR``; deeplab2's is the same with a warmup from 0):
  for the 0-based global optimizer step ``t``::

      t <  warmup_iters: lr = base * (f + (1 - f) * t / warmup_iters)      f = warmup_factor
      t >= warmup_iters: lr = base * (1 - t / max_iters) ** power

  The poly factor is *not* applied during warmup, exactly as in the reference.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from kmax_deeplab.modeling.layers.norm import LayerNormFP32

# Module types whose parameters never decay (bytedance ``norm_module_types`` plus ours).
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    LayerNormFP32,
)
try:  # channels-first LayerNorm2d may not subclass nn.LayerNorm
    from kmax_deeplab.modeling.layers.norm import LayerNorm2d

    _NORM_TYPES = _NORM_TYPES + (LayerNorm2d,)
except ImportError:  # pragma: no cover
    pass

# Substrings of the module name / parameter name that switch weight decay off.
NO_DECAY_MODULE_KEYS = ("_rpe", "_cluster_centers")
NO_DECAY_PARAM_KEYS = ("bias", "gamma", "_embeddings")


#: ``(predicate(full_param_name) -> bool, lr_multiplier)``; the first matching rule applies.
LRRule = tuple[Callable[[str], bool], float]


def in_module(prefix: str) -> Callable[[str], bool]:
    """Predicate: the parameter belongs to the module ``prefix`` (``prefix`` or ``prefix.*``)."""
    def predicate(name: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    predicate.__name__ = f"in_module({prefix!r})"
    return predicate


def backbone_rules(backbone_lr_multiplier: float) -> tuple[LRRule, ...]:
    """kMaX's LR rule: parameters of the ``backbone`` module get ``backbone_lr_multiplier``."""
    return ((in_module("backbone"), float(backbone_lr_multiplier)),)


def decays(module_name: str, module: nn.Module, param_name: str) -> bool:
    """Whether a parameter gets weight decay (bytedance ``build_optimizer`` rules, spec §4)."""
    full_name = f"{module_name}.{param_name}" if module_name else param_name
    return not (
        isinstance(module, _NORM_TYPES)
        or isinstance(module, nn.Embedding)
        or any(k in module_name for k in NO_DECAY_MODULE_KEYS)
        or any(k in param_name for k in NO_DECAY_PARAM_KEYS)
        or "_embeddings" in full_name
    )


def param_group_rule(module_name: str, module: nn.Module, param_name: str, *,
                     backbone_lr_multiplier: float | None = None,
                     lr_rules: Sequence[LRRule] | None = None) -> tuple[float, bool]:
    """Return ``(lr_multiplier, decay)`` for one parameter.

    Args:
        module_name: dotted name of the module owning the parameter (``""`` for the root).
        module: that module.
        param_name: the parameter's local name inside ``module`` (e.g. ``"weight"``).
        backbone_lr_multiplier: shortcut for ``lr_rules=backbone_rules(m)`` (kMaX).
        lr_rules: ``(predicate(full_param_name), multiplier)`` pairs; first match wins, else 1.
    """
    if lr_rules is None:
        lr_rules = backbone_rules(1.0 if backbone_lr_multiplier is None else backbone_lr_multiplier)
    full_name = f"{module_name}.{param_name}" if module_name else param_name
    lr_mult = next((float(m) for predicate, m in lr_rules if predicate(full_name)), 1.0)
    return lr_mult, decays(module_name, module, param_name)


def build_param_groups(model: nn.Module, *, base_lr: float, weight_decay: float,
                       backbone_lr_multiplier: float = 0.1,
                       lr_rules: Sequence[LRRule] | None = None,
                       decay_rule: Callable[[str, nn.Module, str], bool] = decays) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into optimizer groups.

    Parameters sharing ``(lr, weight_decay)`` are merged into one group (fewer groups than
    bytedance's one-per-parameter, same numbers). Each group also carries ``"names"`` (the
    full parameter names, for inspection) and ``"lr_multiplier"``; the schedule scales
    ``initial_lr = base_lr * lr_multiplier``.

    Args:
        model: the (unwrapped) model.
        base_lr: solver base LR.
        weight_decay: decoupled weight decay of decaying parameters (0.05).
        backbone_lr_multiplier: kMaX's rule (used when ``lr_rules`` is None).
        lr_rules: the family's LR rules (see :func:`param_group_rule`).
        decay_rule: ``(module_name, module, param_name) -> bool`` (default :func:`decays`).

    Returns:
        A list of dicts ``{"params", "names", "lr", "initial_lr", "lr_multiplier",
        "weight_decay"}`` in a deterministic order (first appearance in the model).
    """
    if lr_rules is None:
        lr_rules = backbone_rules(backbone_lr_multiplier)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr_mult, _ = param_group_rule(module_name, module, param_name, lr_rules=lr_rules)
            decay = decay_rule(module_name, module, param_name)
            key = (lr_mult, decay)
            if key not in groups:
                groups[key] = {"params": [], "names": [], "lr_multiplier": lr_mult,
                               "lr": base_lr * lr_mult, "initial_lr": base_lr * lr_mult,
                               "weight_decay": weight_decay if decay else 0.0}
            groups[key]["params"].append(param)
            groups[key]["names"].append(f"{module_name}.{param_name}" if module_name else param_name)
    return list(groups.values())


OPTIMIZERS = ("adamw", "adam")


def build_optimizer(model: nn.Module, solver: Any, *,
                    lr_rules: Sequence[LRRule] | None = None) -> torch.optim.Optimizer:
    """``solver.optimizer`` (``"adamw"``, default, or ``"adam"``) over :func:`build_param_groups`.

    Reads ``base_lr``, ``weight_decay``, ``backbone_lr_multiplier`` (when ``lr_rules`` is None),
    ``betas``, ``eps``. Adam's weight decay is the L2 penalty of ``torch.optim.Adam`` (MaX-DeepLab
    uses 0).

    Raises:
        ValueError: unknown ``solver.optimizer``.
    """
    kind = getattr(solver, "optimizer", "adamw")
    if kind not in OPTIMIZERS:
        raise ValueError(f"solver.optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    groups = build_param_groups(model, base_lr=solver.base_lr, weight_decay=solver.weight_decay,
                                backbone_lr_multiplier=solver.backbone_lr_multiplier, lr_rules=lr_rules)
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, lr=solver.base_lr, betas=tuple(solver.betas), eps=solver.eps,
               weight_decay=solver.weight_decay)


def warmup_poly_factor(step: int, *, max_iters: int, warmup_iters: int, warmup_factor: float,
                       power: float) -> float:
    """LR multiplier at 0-based global optimizer step ``step`` (see module docstring).

    Raises:
        ValueError: ``max_iters <= 0`` or ``warmup_iters < 0``.
    """
    if max_iters <= 0 or warmup_iters < 0:
        raise ValueError(f"max_iters must be > 0 and warmup_iters >= 0, got {max_iters}, {warmup_iters}")
    if step < warmup_iters:
        alpha = step / warmup_iters
        return warmup_factor * (1.0 - alpha) + alpha
    return max(0.0, 1.0 - step / max_iters) ** power


class WarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warmup then poly decay, evaluated on the global step (``last_epoch``).

    ``scheduler.step()`` is called once after every optimizer update, so update ``t``
    (0-based) runs at ``base_lr * warmup_poly_factor(t)``. Its ``state_dict`` holds only
    plain numbers, so it loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, max_iters: int, warmup_iters: int,
                 warmup_factor: float = 0.001, power: float = 0.9, last_epoch: int = -1) -> None:
        self.max_iters = int(max_iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of every group's ``initial_lr`` at ``step``."""
        return warmup_poly_factor(step, max_iters=self.max_iters, warmup_iters=self.warmup_iters,
                                  warmup_factor=self.warmup_factor, power=self.power)

    def get_lr(self) -> list[float]:  # noqa: D102 (torch API)
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def warmup_step_factor(step: int, *, warmup_iters: int, warmup_factor: float,
                       steps: Sequence[int], gamma: float) -> float:
    """LR multiplier of linear warmup + step decay at 0-based optimizer step ``step``.

    ``gamma ** (number of milestones <= step)``, times the linear warmup factor
    ``f + (1 - f) * step / warmup_iters`` while ``step < warmup_iters`` (mmcv's ``step`` policy
    with ``warmup='linear'``, K-Net's recipe, counted in iterations).

    Raises:
        ValueError: ``warmup_iters < 0`` or milestones not increasing.
    """
    if warmup_iters < 0 or list(steps) != sorted(steps):
        raise ValueError(f"warmup_iters must be >= 0 and lr_steps increasing, got {warmup_iters}, {list(steps)}")
    factor = float(gamma) ** sum(step >= s for s in steps)
    if step < warmup_iters:
        alpha = step / warmup_iters
        factor *= warmup_factor * (1.0 - alpha) + alpha
    return factor


class WarmupStepLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warmup then step decay at ``steps`` by ``gamma`` (:func:`warmup_step_factor`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_iters: int, steps: Sequence[int],
                 gamma: float = 0.1, warmup_factor: float = 0.001, last_epoch: int = -1) -> None:
        self.warmup_iters = int(warmup_iters)
        self.steps = [int(s) for s in steps]
        self.gamma = float(gamma)
        self.warmup_factor = float(warmup_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of every group's ``initial_lr`` at ``step``."""
        return warmup_step_factor(step, warmup_iters=self.warmup_iters, warmup_factor=self.warmup_factor,
                                  steps=self.steps, gamma=self.gamma)

    def get_lr(self) -> list[float]:  # noqa: D102 (torch API)
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


SCHEDULES = ("warmup_poly", "warmup_step")


def build_scheduler(optimizer: torch.optim.Optimizer, solver: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """``solver.lr_schedule``: :class:`WarmupPolyLR` (default) or :class:`WarmupStepLR`.

    Reads ``max_iters``, ``warmup_iters``, ``warmup_factor``, ``poly_power`` (poly) or
    ``lr_steps``, ``lr_gamma`` (step).

    Raises:
        ValueError: unknown ``solver.lr_schedule``.
    """
    kind = getattr(solver, "lr_schedule", "warmup_poly")
    if kind == "warmup_poly":
        return WarmupPolyLR(optimizer, max_iters=solver.max_iters, warmup_iters=solver.warmup_iters,
                            warmup_factor=solver.warmup_factor, power=solver.poly_power)
    if kind == "warmup_step":
        return WarmupStepLR(optimizer, warmup_iters=solver.warmup_iters, steps=tuple(solver.lr_steps),
                            gamma=solver.lr_gamma, warmup_factor=solver.warmup_factor)
    raise ValueError(f"solver.lr_schedule must be one of {SCHEDULES}, got {kind!r}")


def lr_table(optimizer: torch.optim.Optimizer) -> Iterable[tuple[str, float, float]]:
    """Yield ``(first_param_name, lr, weight_decay)`` per group, for logs."""
    for g in optimizer.param_groups:
        names = g.get("names") or ["?"]
        yield names[0], g["lr"], g["weight_decay"]
