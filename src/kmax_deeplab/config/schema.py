"""Configuration schema: plain dataclasses, readable from YAML and ``key=value`` overrides.

The schema is the single place where settings live; ``modeling``/``losses``/``data``
never import it: builders such as ``build_kmax(cfg.model)`` read attributes of the
section they are given (duck typing), so the layers below stay free of config code.

Sections follow spec ``kmax_deeplab.md``: §1 (model), §2 (losses), §3 (post-processing),
§4 (training recipe).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml


@dataclass
class ModelConfig:
    """Architecture of a mask-transformer model (spec §1).

    Attributes:
        meta_architecture: model family; ``"kmax"`` for now.
        backbone: ``resnet50`` (torchvision/detectron2 layout), ``resnet50_deeplab2``
            (deeplab2 layout, needed for deeplab2 TF R50 checkpoints), ``convnext_tiny``,
            ``convnext_small``, ``convnext_base``, ``convnext_large`` or ``resnet_tiny``
            (tests and demo).
        backbone_drop_path: stochastic-depth rate of ConvNeXt (linearly rising).
        num_classes: C, the number of thing + stuff classes (void is extra, index C).
        num_queries: N, the number of cluster centres.
        image_size: (H, W) of the model canvas, each of the form 32k+1.
        decoder_filters: base width f of each pixel-decoder stage (strides 32, 16, 8, 4).
        decoder_num_blocks: blocks per pixel-decoder stage.
        decoder_block_types: ``"axial"`` or ``"bottleneck"`` per stage.
        use_stem_skip: add the fifth decoder stage on the stem features (Cityscapes).
        transformer_layers: kMaX layers reading strides 32, 16, 8.
        hidden_dim: query width (256).
        key_dim / value_dim / ffn_dim / num_heads: transformer sizes (128/256/2048/8).
        pixel_feature_dim: width of the L2-normalised pixel feature (128).
        drop_path: decoder drop-path rate (k-means, attention, FFN branches).
        aux_semantic: ``"decoder"`` (COCO/ADE20K), ``"head"`` (Cityscapes) or ``"none"``.
        reference: ``"bytedance"`` (default) or ``"deeplab2"`` behaviour switches.
        norm: ``"BN"`` or ``"SyncBN"`` for every batch norm (eps 1e-3, momentum 0.01).
    """

    meta_architecture: str = "kmax"
    backbone: str = "resnet50"
    backbone_drop_path: float = 0.0
    num_classes: int = 133
    num_queries: int = 128
    image_size: tuple[int, int] = (1281, 1281)
    decoder_filters: tuple[int, ...] = (512, 256, 128, 64)
    decoder_num_blocks: tuple[int, ...] = (1, 5, 1, 1)
    decoder_block_types: tuple[str, ...] = ("axial", "axial", "bottleneck", "bottleneck")
    use_stem_skip: bool = False
    transformer_layers: tuple[int, ...] = (2, 2, 2)
    hidden_dim: int = 256
    key_dim: int = 128
    value_dim: int = 256
    ffn_dim: int = 2048
    num_heads: int = 8
    pixel_feature_dim: int = 128
    drop_path: float = 0.2
    aux_semantic: str = "decoder"
    reference: str = "bytedance"
    norm: str = "BN"


@dataclass
class PostProcessConfig:
    """Mask-wise merging thresholds (spec §3)."""

    # "auto": the variant of model.reference (bytedance, or deeplab2: >=, area limits,
    # crop-resolution merging); "bytedance" / "deeplab2" force one.
    variant: str = "auto"
    thing_threshold: float = 0.7
    stuff_threshold: float = 0.5
    overlap_threshold: float = 0.8
    pixel_confidence_threshold: float = 0.4
    class_weight: float = 1.0
    mask_weight: float = 1.0
    thing_area_limit: int = 400
    stuff_area_limit: int = 6400


@dataclass
class LossConfig:
    """Loss weights and sampling settings (spec §2)."""

    class_weight: float = 3.0
    dice_weight: float = 3.0
    mask_id_weight: float = 0.3
    instance_discrimination_weight: float = 1.0
    semantic_weight: float = 1.0
    focal_alpha: float = 0.75
    instance_discrimination_temperature: float = 0.3
    instance_sample_k: int = 4096
    instance_sample_temperature: float = 1.5
    semantic_sample_k: int = 4096  # 0 = all pixels (Cityscapes)
    semantic_sample_temperature: float = 2.0
    share_final_matching: bool = True
    mask_void_pixels: bool = True  # BD MASKING_VOID_PIXEL: zero query probs on void in matching/dice


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
    flip: bool = True
    min_valid_pixels: int = 4096  # re-sample crops with <= this many stride-4 valid pixels
    color_jitter: bool = True  # BD SSD colour jitter (data/photometric.py)
    copy_paste: bool = True  # BD panoptic copy-paste, second image at 0.5x scale (data/copy_paste.py)
    on_bad_sample: str = "raise"  # or "skip"
    num_workers: int = 4


@dataclass
class SolverConfig:
    """Optimisation and training loop (spec §4; used by :mod:`kmax_deeplab.engine`).

    Attributes:
        batch_size: GLOBAL images per optimizer step, split over ranks and
            ``grad_accum_steps`` (must divide evenly).
        max_iters: optimizer steps; the poly schedule reaches 0 here.
        base_lr / backbone_lr_multiplier: AdamW LR; x0.1 for modules named ``*backbone*``.
        weight_decay / betas / eps: AdamW (eps 1e-8 bytedance; deeplab2 uses 1e-7).
        warmup_iters / warmup_factor / poly_power: linear warmup from
            ``warmup_factor`` x LR (bytedance 0.001; deeplab2 0), then poly decay.
        amp: ``"none"`` (fp32), ``"bf16"`` or ``"fp16"`` (with a GradScaler; CUDA only);
            losses are always computed in fp32.
        grad_accum_steps: micro-batches per optimizer step.
        checkpoint_period / eval_period / log_period: in optimizer steps (0 = off).
        nan_policy: ``"raise"`` (stop, naming the iteration and loss term) or ``"skip"``.
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
    amp: str = "none"  # "none" | "bf16" | "fp16"
    grad_accum_steps: int = 1
    checkpoint_period: int = 5000
    eval_period: int = 5000
    log_period: int = 20
    nan_policy: str = "raise"  # or "skip"
    seed: int = 0
    output_dir: str = "runs/kmax"
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK if available, else cpu) | "cpu" | "cuda"


@dataclass
class Config:
    """Everything that defines a run: model, data, losses, solver, post-processing."""

    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)


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
    """Build a :class:`Config` from a nested mapping; unknown keys raise ``ValueError``."""
    return _from_dict(Config, data, "config")


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
            raise ValueError(f"override {item!r}: unknown key {key!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    return config_from_dict(data)


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a preset name (see ``kmax info``) or a YAML/JSON file, then apply overrides.

    A YAML file may start from a preset with a top-level ``base: PRESET`` key.

    Raises:
        FileNotFoundError: ``source`` is neither a preset nor an existing file.
        ValueError: the file has unknown keys or badly typed values.
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
            _deep_update(merged, data)
            data = merged
        try:
            cfg = config_from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return apply_overrides(cfg, overrides) if overrides else cfg


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
