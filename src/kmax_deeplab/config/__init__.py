"""Typed configuration: dataclass schema, presets and YAML / ``key=value`` overrides."""

from kmax_deeplab.config.schema import (
    Config,
    DataConfig,
    KMaXLossConfig,
    KMaXModelConfig,
    KMaXPostProcessConfig,
    LossConfig,
    ModelConfig,
    PostProcessConfig,
    SolverConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    family_sections,
    load_config,
    save_config,
)
from kmax_deeplab.config.presets import PRESETS, get_preset, list_presets

__all__ = [
    "Config",
    "DataConfig",
    "KMaXLossConfig",
    "KMaXModelConfig",
    "KMaXPostProcessConfig",
    "LossConfig",
    "ModelConfig",
    "PostProcessConfig",
    "SolverConfig",
    "PRESETS",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "family_sections",
    "get_preset",
    "list_presets",
    "load_config",
    "save_config",
]
