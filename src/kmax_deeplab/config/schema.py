"""Configuration schema: plain dataclasses, readable from YAML and ``key=value`` overrides.

The schema is the single place where settings live; ``modeling``/``losses``/``data``
never import it: family builders read attributes of the config they are given (duck typing), so the layers below stay free of config code.

Shared sections: ``data``, ``solver`` and the shared fields of ``model``
(:class:`ModelConfig`). The model family named by ``model.meta_architecture`` owns the
classes of ``model``, ``loss`` and ``postprocess`` (a tagged union; see
``kmax_deeplab.modeling.families``). kMaX's follow spec ``kmax_deeplab.md``: §1 (model),
§2 (losses), §3 (post-processing), §4 (training recipe).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml


# The shared model fields live below ``config/`` so that family sections can extend them.
from kmax_deeplab.modeling.sections import ModelConfig  # noqa: E402

# kMaX's sections, under their old names too (``LossConfig``/``PostProcessConfig`` were kMaX's).
from kmax_deeplab.modeling.kmax.config import (  # noqa: E402
    KMaXLossConfig,
    KMaXModelConfig,
    KMaXPostProcessConfig,
)

LossConfig = KMaXLossConfig
PostProcessConfig = KMaXPostProcessConfig

#: Sections of :class:`Config` whose class the model family chooses.
FAMILY_SECTIONS = ("model", "loss", "postprocess")


@dataclass
class DataConfig:
    """Dataset and augmentation (spec §4).

    ``dataset`` names the catalog entry (``coco``, ``cityscapes``, ``ade20k``,
    ``synthetic``); ``train_*``/``val_*`` give a COCO-panoptic layout (image folder,
    panoptic JSON, panoptic PNG folder).
    """

    dataset: str = "coco"
    root: str = ""
    train_image_dir: str = "train2017"
    train_json: str = "annotations/panoptic_train2017.json"
    train_panoptic_dir: str = "annotations/panoptic_train2017"
    val_image_dir: str = "val2017"
    val_json: str = "annotations/panoptic_val2017.json"
    val_panoptic_dir: str = "annotations/panoptic_val2017"
    crop_size: tuple[int, int] = (1281, 1281)
    min_scale: float = 0.2
    max_scale: float = 2.0
    # deeplab2's scale_factor_step_size: 0 draws the scale uniformly (bytedance, and deeplab2 with
    # step 0); > 0 picks one of int((max - min) / step + 1) evenly spaced values in [min, max]
    # (deeplab2 preprocess_utils.get_random_scale; the MaX and kMaX deeplab2 configs use 0.1).
    scale_step: float = 0.0
    flip: bool = True
    min_valid_pixels: int = 4096  # re-sample crops with <= this many stride-4 valid pixels
    color_jitter: bool = True  # BD SSD colour jitter (data/photometric.py)
    copy_paste: bool = True  # BD panoptic copy-paste, second image at 0.5x scale (data/copy_paste.py)
    on_bad_sample: str = "raise"  # or "skip"
    # deeplab2 (MaX-DeepLab-L): AutoAugment policy name ("" = off; data/autoaugment.py) and the
    # semantic-loss weight of thing segments smaller than small_instance_threshold pixels (1.0 = off).
    autoaugment: str = ""
    small_instance_weight: float = 1.0
    small_instance_threshold: int = 4096
    num_workers: int = 4
    # Test-time resize (kmax_deeplab.geometry.inference_size): the rule of "bytedance"
    # (detectron2 ResizeShortestEdge, int(x + 0.5)) or "deeplab2" (resize_to_range, float32 floor);
    # "reference" = model.reference's. Limits -1 = that reference's own values for the dataset.
    test_resize: str = "reference"
    test_min_size: int = -1
    test_max_size: int = -1


@dataclass
class SolverConfig:
    """Optimisation and training loop (spec §4; used by :mod:`kmax_deeplab.engine`).

    Attributes:
        batch_size: GLOBAL images per optimizer step, split over ranks and
            ``grad_accum_steps`` (must divide evenly).
        max_iters: optimizer steps; the poly schedule reaches 0 here.
        base_lr / backbone_lr_multiplier: base LR; x0.1 for the ``backbone`` module (kMaX's
            rule; a family may give other LR rules).
        weight_decay / betas / eps: AdamW (eps 1e-8 bytedance; deeplab2 uses 1e-7).
        warmup_iters / warmup_factor / poly_power: linear warmup from
            ``warmup_factor`` x LR (bytedance 0.001; deeplab2 0), then poly decay.
        optimizer: ``"adamw"`` (kMaX, K-Net) or ``"adam"`` (MaX-DeepLab).
        lr_schedule: ``"warmup_poly"`` or ``"warmup_step"`` (decay by ``lr_gamma`` at each of
            ``lr_steps``).
        clip_grad_norm: max global L2 gradient norm, applied after AMP unscaling (0 = off;
            K-Net 1.0).
        amp: ``"none"`` (fp32), ``"bf16"`` or ``"fp16"`` (with a GradScaler; CUDA only);
            losses are always computed in fp32.
        grad_accum_steps: micro-batches per optimizer step.
        checkpoint_period / eval_period / log_period: in optimizer steps (0 = off).
        nan_policy: ``"raise"`` (stop, naming the iteration and loss term) or ``"skip"``.
        keep_last_n: after each checkpoint, delete all but the newest N (0 = keep all).
        seed: data order, augmentation and initialisation seed.
        output_dir: default run folder.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    batch_size: int = 64
    max_iters: int = 150_000
    base_lr: float = 5e-4
    backbone_lr_multiplier: float = 0.1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_iters: int = 5000
    warmup_factor: float = 0.001
    poly_power: float = 0.9
    optimizer: str = "adamw"  # or "adam" (MaX-DeepLab)
    lr_schedule: str = "warmup_poly"  # or "warmup_step" (K-Net)
    lr_steps: tuple[int, ...] = ()  # warmup_step: iterations where the LR is multiplied by lr_gamma
    lr_gamma: float = 0.1
    clip_grad_norm: float = 0.0  # > 0: clip the global L2 norm of the (unscaled) gradients
    amp: str = "none"  # "none" | "bf16" | "fp16"
    grad_accum_steps: int = 1
    checkpoint_period: int = 5000
    eval_period: int = 5000
    log_period: int = 20
    nan_policy: str = "raise"  # or "skip"
    keep_last_n: int = 0  # keep only the newest N training checkpoints (0 = all)
    seed: int = 0
    output_dir: str = "runs/kmax"
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK if available, else cpu) | "cpu" | "cuda"


def _families():
    from kmax_deeplab.modeling.families import FAMILIES

    return FAMILIES


def family_sections(meta_architecture: str) -> dict[str, type]:
    """The section classes (``model``, ``loss``, ``postprocess``) of a model family.

    Raises:
        ValueError: unknown family; the message lists the known ones.
    """
    families = _families()
    if meta_architecture not in families:
        raise ValueError(f"config: model.meta_architecture {meta_architecture!r} is not a model family; "
                         f"available: {', '.join(sorted(families))}")
    sections = dict(families[meta_architecture].sections)
    missing = [s for s in FAMILY_SECTIONS if s not in sections]
    if missing:
        raise ValueError(f"model family {meta_architecture!r} declares no config section(s) {missing}")
    return sections


@dataclass
class Config:
    """Everything that defines a run: model, data, losses, solver, post-processing.

    ``model``, ``loss`` and ``postprocess`` are a tagged union keyed on
    ``model.meta_architecture``: their classes come from that family's row of the family
    table (kMaX: :class:`KMaXModelConfig`, :class:`KMaXLossConfig`,
    :class:`KMaXPostProcessConfig`). ``loss`` / ``postprocess`` left as None get the family's
    defaults.

    Raises:
        ValueError: a section of another family's class than ``model.meta_architecture``.
    """

    name: str = ""
    model: ModelConfig = field(default_factory=KMaXModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: Any = None
    solver: SolverConfig = field(default_factory=SolverConfig)
    postprocess: Any = None

    def __post_init__(self) -> None:
        family = self.model.meta_architecture
        sections = family_sections(family)
        for name in FAMILY_SECTIONS:
            if getattr(self, name) is None:
                setattr(self, name, sections[name]())
            value = getattr(self, name)
            if not isinstance(value, sections[name]):
                raise ValueError(f"config: section {name!r} is a {type(value).__name__} but model family "
                                 f"{family!r} takes a {sections[name].__name__}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Return a JSON/YAML-safe nested dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML/JSON/CLI) to the dataclass field type ``annotation``."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ValueError(f"config: {where} must be a mapping, got {value!r}")
        return _from_dict(annotation, value, where)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config: {where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ValueError(f"config: {where} needs {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, str):
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(f"config: {where} must be a boolean, got {value!r}")
        return bool(value)
    if annotation is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"config: {where} must be an integer, got {value!r}")
        return int(value)
    if annotation is float:
        return float(value)
    if annotation is str:
        return str(value)
    return value


def _from_dict(cls: type, data: Mapping[str, Any], where: str = "config") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from a nested mapping; unknown keys raise ``ValueError``.

    ``model.meta_architecture`` (default ``"kmax"``) picks the classes of the ``model``,
    ``loss`` and ``postprocess`` sections; an unknown key there names the family and its
    valid keys.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"config must be a mapping, got {data!r}")
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"config: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    model = data.get("model") or {}
    if not isinstance(model, Mapping):
        raise ValueError(f"config: model must be a mapping, got {model!r}")
    family = str(model.get("meta_architecture", ModelConfig.meta_architecture))
    sections = family_sections(family)
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for key, value in data.items():
        if key in FAMILY_SECTIONS:
            kwargs[key] = _coerce(value, sections[key], f"config.{key} (model family {family!r})")
        else:
            kwargs[key] = _coerce(value, hints[key], f"config.{key}")
    return Config(**kwargs)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Return a copy of ``cfg`` with dotted ``key=value`` overrides applied.

    Values are parsed as YAML scalars/lists (``solver.max_iters=100``,
    ``model.image_size=[129,129]``).

    Raises:
        ValueError: an override without ``=``, or naming an unknown key.
    """
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ValueError(f"override {item!r}: unknown section {p!r}")
            node = node[p]
        if parts[-1] not in node:
            owner = ""
            if parts[0] in FAMILY_SECTIONS:
                owner = f" of model family {data['model'].get('meta_architecture')!r}"
            raise ValueError(f"override {item!r}: unknown key {key!r}{owner}; valid keys: "
                             f"{sorted(node)}")
        node[parts[-1]] = yaml.safe_load(raw)
    return config_from_dict(data)


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a preset name (see ``kmax info``) or a YAML/JSON file, then apply overrides.

    A YAML file may start from a preset with a top-level ``base: PRESET`` key. When the file
    names another ``model.meta_architecture`` than the preset's, only the preset's shared
    fields (``data``, ``solver``, the shared ``model`` fields) carry over.

    Raises:
        FileNotFoundError: ``source`` is neither a preset nor an existing file.
        ValueError: the file has unknown keys or badly typed values.
        kmax_deeplab.errors.ConfigError: a value out of range or not a known choice
            (:func:`~kmax_deeplab.config.validate.validate_config`).
    """
    from kmax_deeplab.config.presets import PRESETS, get_preset

    source = str(source)
    if source in PRESETS:
        cfg = get_preset(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"config {source!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file"
            )
        with path.open() as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a mapping")
        base = data.pop("base", None)
        if base is not None:
            merged = config_to_dict(get_preset(base))
            family = (data.get("model") or {}).get("meta_architecture") if isinstance(data.get("model"), dict) else None
            if family is not None and family != merged["model"]["meta_architecture"]:
                # Another family on top of this preset: keep the base's shared model fields, data
                # and solver; its family-owned keys do not apply (the file's own keys are checked).
                sections = family_sections(str(family))
                for name in FAMILY_SECTIONS:
                    valid = {f.name for f in dataclasses.fields(sections[name])}
                    merged[name] = {k: v for k, v in merged[name].items() if k in valid}
            _deep_update(merged, data)
            data = merged
        try:
            cfg = config_from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    from kmax_deeplab.config.validate import validate_config

    return validate_config(apply_overrides(cfg, overrides) if overrides else cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML (or JSON when ``path`` ends in ``.json``)."""
    path = Path(path)
    data = config_to_dict(cfg)
    text = json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)


def _deep_update(dst: dict, src: Mapping) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v
