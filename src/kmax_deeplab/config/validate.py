"""Range, enumeration and device checks of a :class:`~kmax_deeplab.config.Config`.

:func:`validate_config` runs at the end of :func:`~kmax_deeplab.config.load_config`, so a
bad value (``postprocess.thing_threshold=nan``, ``postprocess.variant=nonsense``,
``solver.batch_size=0``) stops a command before any model is built or any run folder is
created, with one :class:`~kmax_deeplab.errors.ConfigError` naming the option.
:func:`check_device` checks that a device exists on this machine (used by ``kmax train``
for ``solver.device`` and by ``kmax predict --device``; not at load time, so that a config
written on a GPU machine still loads on a CPU one).

Architecture names (``model.backbone``, ``model.meta_architecture``) are checked by the
model builders, which also run before the run folder is created.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from kmax_deeplab.errors import ConfigError, DeviceError

__all__ = ["validate_config", "check_device", "DEVICE_NAMES"]

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

AMP = ("none", "bf16", "fp16")
NAN_POLICIES = ("raise", "skip")
ON_BAD_SAMPLE = ("raise", "skip")


def _number(value: Any, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{option}={value!r}: must be a number")
    if not math.isfinite(value):
        raise ConfigError(f"{option}={value!r}: must be a finite number")
    return float(value)


def _in_range(value: Any, option: str, lo: float | None = None, hi: float | None = None, *,
              lo_open: bool = False, hi_open: bool = False) -> None:
    v = _number(value, option)
    bad = ((lo is not None and (v < lo or (lo_open and v == lo)))
           or (hi is not None and (v > hi or (hi_open and v == hi))))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{option}={value!r}: must be in {span}")


def _one_of(value: Any, option: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{option}={value!r}: unknown value; expected one of {', '.join(choices)}")


def _positive_ints(values: Any, option: str, minimum: int = 1) -> None:
    for v in (values if isinstance(values, (list, tuple)) else [values]):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{option}={values!r}: must be integer(s) >= {minimum}")


def validate_config(cfg: Any) -> Any:
    """Check ranges and enumerations of ``cfg``; returns ``cfg`` unchanged.

    Checked (by field-name convention, so every family's sections are covered):
    post-processing ``*_threshold`` finite in [0, 1], ``*_weight`` finite and >= 0,
    ``*_area_limit`` >= 0, ``postprocess.variant`` known (kMaX: auto, bytedance, deeplab2); loss weights finite >= 0, ``focal_alpha``
    in [0, 1], temperatures > 0; data scales > 0 with ``min_scale <= max_scale``, known
    ``data.dataset`` and ``data.on_bad_sample``; solver sizes >= 1, LR > 0, ``betas`` in
    [0, 1), ``eps`` > 0, known ``amp``/``nan_policy``, a well-formed ``device``; model
    sizes >= 1, drop-path rates in [0, 1) and a known ``model.dcn`` (none, DCN, DCNv2).
    Sections absent from ``cfg`` are skipped.

    Raises:
        ConfigError: naming the first bad option and its value.
    """
    family = getattr(getattr(cfg, "model", None), "meta_architecture", None)
    pp = getattr(cfg, "postprocess", None)
    if pp is not None:
        if family == "kmax" and hasattr(pp, "variant"):
            from kmax_deeplab.modeling.postprocess import VARIANTS

            _one_of(pp.variant, "postprocess.variant", ("auto",) + tuple(VARIANTS))  # auto: model.reference's
        for name, value in vars(pp).items():
            if name.endswith("_threshold"):
                _in_range(value, f"postprocess.{name}", 0.0, 1.0)
            elif name.endswith("_weight"):
                _in_range(value, f"postprocess.{name}", 0.0)
            elif name.endswith("_area_limit"):
                _positive_ints(value, f"postprocess.{name}", 0)
    loss = getattr(cfg, "loss", None)
    if loss is not None:
        for name, value in vars(loss).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if name.endswith("_weight"):
                _in_range(value, f"loss.{name}", 0.0)
            elif name.endswith("temperature"):
                _in_range(value, f"loss.{name}", 0.0, lo_open=True)
            elif name.endswith("_sample_k"):
                _positive_ints(value, f"loss.{name}", 0)
            elif name == "focal_alpha":
                _in_range(value, "loss.focal_alpha", 0.0, 1.0)
    data = getattr(cfg, "data", None)
    if data is not None:
        from kmax_deeplab.data.catalog import get_dataset_meta

        try:
            get_dataset_meta(data.dataset)
        except KeyError as e:
            raise ConfigError(f"data.dataset={data.dataset!r}: {str(e.args[0]) if e.args else e}") from None
        _one_of(data.on_bad_sample, "data.on_bad_sample", ON_BAD_SAMPLE)
        _positive_ints(data.crop_size, "data.crop_size")
        _in_range(data.min_scale, "data.min_scale", 0.0, lo_open=True)
        _in_range(data.max_scale, "data.max_scale", 0.0, lo_open=True)
        _in_range(getattr(data, "scale_step", 0.0), "data.scale_step", 0.0)
        if data.min_scale > data.max_scale:
            raise ConfigError(f"data.min_scale={data.min_scale} is larger than data.max_scale="
                              f"{data.max_scale}")
        _positive_ints(data.num_workers, "data.num_workers", 0)
        _positive_ints(data.min_valid_pixels, "data.min_valid_pixels", 0)
        if getattr(data, "autoaugment", ""):
            from kmax_deeplab.data.autoaugment import POLICIES

            _one_of(data.autoaugment, "data.autoaugment", ("",) + tuple(POLICIES))
        if hasattr(data, "small_instance_weight"):
            _in_range(data.small_instance_weight, "data.small_instance_weight", 0.0, lo_open=True)
            _positive_ints(data.small_instance_threshold, "data.small_instance_threshold", 0)
            arch = getattr(getattr(cfg, "model", None), "meta_architecture", "max_deeplab")
            if data.small_instance_weight != 1.0 and arch != "max_deeplab":
                raise ConfigError(f"data.small_instance_weight={data.small_instance_weight}: only MaX-DeepLab's "
                                  f"semantic loss reads it (model.meta_architecture {arch!r} would ignore it); "
                                  "leave it at 1.0")
    solver = getattr(cfg, "solver", None)
    if solver is not None:
        _one_of(solver.amp, "solver.amp", AMP)
        if hasattr(solver, "optimizer") or hasattr(solver, "lr_schedule"):
            from kmax_deeplab.solver import OPTIMIZERS, SCHEDULES

            _one_of(getattr(solver, "optimizer", "adamw"), "solver.optimizer", OPTIMIZERS)
            _one_of(getattr(solver, "lr_schedule", "warmup_poly"), "solver.lr_schedule", SCHEDULES)
        if hasattr(solver, "lr_gamma"):
            _in_range(solver.lr_gamma, "solver.lr_gamma", 0.0, lo_open=True)
        if hasattr(solver, "clip_grad_norm"):
            _in_range(solver.clip_grad_norm, "solver.clip_grad_norm", 0.0)
        _one_of(solver.nan_policy, "solver.nan_policy", NAN_POLICIES)
        if not isinstance(solver.device, str) or not _DEVICE_RE.match(solver.device):
            raise ConfigError(f"solver.device={solver.device!r}: unknown device; expected one of "
                              f"{', '.join(DEVICE_NAMES)}")
        for name in ("batch_size", "max_iters", "grad_accum_steps"):
            _positive_ints(getattr(solver, name), f"solver.{name}")
        for name in ("checkpoint_period", "eval_period", "log_period", "warmup_iters",
                     "keep_last_n"):
            if hasattr(solver, name):
                _positive_ints(getattr(solver, name), f"solver.{name}", 0)
        _in_range(solver.base_lr, "solver.base_lr", 0.0, lo_open=True)
        _in_range(solver.backbone_lr_multiplier, "solver.backbone_lr_multiplier", 0.0)
        _in_range(solver.weight_decay, "solver.weight_decay", 0.0)
        _in_range(solver.eps, "solver.eps", 0.0, lo_open=True)
        _in_range(solver.warmup_factor, "solver.warmup_factor", 0.0, 1.0)
        _in_range(solver.poly_power, "solver.poly_power", 0.0)
        for i, b in enumerate(solver.betas):
            _in_range(b, f"solver.betas[{i}]", 0.0, 1.0, hi_open=True)
    model = getattr(cfg, "model", None)
    if model is not None:
        for name in ("num_classes", "num_queries", "image_size"):
            if hasattr(model, name):
                _positive_ints(getattr(model, name), f"model.{name}")
        for name in ("drop_path", "backbone_drop_path"):
            if hasattr(model, name):
                _in_range(getattr(model, name), f"model.{name}", 0.0, 1.0, hi_open=True)
        if hasattr(model, "dcn"):  # deformable backbone convs (K-Net R-101-DCN)
            from kmax_deeplab.modeling.layers.deform_conv import DCN_TYPES

            _one_of(model.dcn, "model.dcn", ("none",) + tuple(DCN_TYPES))
    return cfg


def check_device(device: str, option: str = "--device") -> str:
    """Check that ``device`` is well formed and present on this machine; returns it.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        option: the option or config key named in the error (``--device``, ``solver.device``).

    Raises:
        DeviceError: malformed name, or no such accelerator (with a hint).
    """
    import torch

    name = str(device)
    if not _DEVICE_RE.match(name):
        raise DeviceError(f"{option}={name!r}: unknown device; expected one of {', '.join(DEVICE_NAMES)}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{option}={name}: CUDA is not available on this machine",
                              hint="use cpu (see `kmax info` for the devices torch can use)")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise DeviceError(f"{option}={name}: this machine has {torch.cuda.device_count()} CUDA "
                              "device(s)", hint="see `kmax info`")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if not (mps is not None and mps.is_available()):
            raise DeviceError(f"{option}=mps: Apple MPS is not available on this machine",
                              hint="use cpu (see `kmax info`)")
    return name
