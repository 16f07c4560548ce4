"""Package-level checks: import direction, the CLI surface, config presets."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from kmax_deeplab import cli
from kmax_deeplab.config import (
    PRESETS,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    get_preset,
    load_config,
    save_config,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "kmax_deeplab"
LOW_LEVEL = ("data", "modeling", "losses", "evaluation")
FORBIDDEN_TARGETS = ("kmax_deeplab.engine", "kmax_deeplab.cli", "kmax_deeplab.config",
                     "kmax_deeplab.commands")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_imports_point_down():
    """modeling/losses/evaluation/data never import engine, cli, commands or config."""
    offenders = []
    for pkg in LOW_LEVEL:
        for path in (SRC / pkg).rglob("*.py"):
            for name in _imports(path):
                if name.startswith(FORBIDDEN_TARGETS):
                    offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert offenders == []


def test_core_does_not_import_torchvision_or_timm():
    offenders = [f"{p.relative_to(SRC)}: {n}" for p in SRC.rglob("*.py") for n in _imports(p)
                 if n.split(".")[0] in ("torchvision", "timm", "detectron2", "mmcv", "tensorflow")]
    assert offenders == []


@pytest.mark.parametrize("command", ["predict", "train", "evaluate", "prepare", "convert", "demo", "info",
                                     "export", "app"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert f"kmax {command}" in capsys.readouterr().out


def test_info_lists_versions_and_presets(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    import torch

    assert torch.__version__ in out
    assert "coco/kmax_r50" in out and "synthetic/kmax_tiny" in out
    assert "CUDA available:" in out


def test_console_script_runs():
    exe = Path(sys.executable).parent / "kmax"
    if not exe.exists():
        pytest.skip("package not installed with its console script (run via `make test`)")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("kmax-deeplab ")


def test_preset_numbers_follow_the_spec():
    coco = get_preset("coco/kmax_r50")
    assert coco.model.num_queries == 128 and coco.model.image_size == (1281, 1281)
    assert coco.solver.base_lr == 5e-4 and coco.solver.max_iters == 150_000
    assert coco.postprocess.thing_threshold == 0.7 and coco.postprocess.pixel_confidence_threshold == 0.4
    city = get_preset("cityscapes/kmax_convnext_large")
    assert city.model.num_queries == 256 and city.model.image_size == (1025, 2049)
    assert city.model.backbone_drop_path == 0.6 and city.postprocess.mask_weight == 0.0
    ade = get_preset("ade20k/kmax_convnext_large_641")
    assert ade.model.backbone_drop_path == 0.7 and ade.model.drop_path == 0.0
    assert ade.loss.instance_sample_k == 1024
    for name in PRESETS:
        if get_preset(name).model.meta_architecture != "kmax":
            continue  # the 32k+1 canvas is kMaX's geometry (K-Net: a (short, long) test scale)
        h, w = get_preset(name).model.image_size
        assert (h - 1) % 32 == 0 and (w - 1) % 32 == 0, name


def test_config_roundtrip_and_overrides(tmp_path):
    cfg = get_preset("synthetic/kmax_tiny")
    assert config_from_dict(config_to_dict(cfg)) == cfg
    cfg2 = apply_overrides(cfg, ["solver.max_iters=7", "model.image_size=[65,97]", "data.flip=false"])
    assert cfg2.solver.max_iters == 7 and cfg2.model.image_size == (65, 97) and cfg2.data.flip is False
    path = tmp_path / "c.yaml"
    save_config(cfg2, path)
    assert load_config(path) == cfg2
    (tmp_path / "d.yaml").write_text("base: coco/kmax_r50\nsolver:\n  batch_size: 16\n")
    d = load_config(tmp_path / "d.yaml")
    assert d.solver.batch_size == 16 and d.model.num_queries == 128
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(cfg, ["solver.max_iter=7"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["solver.max_iters"])
    (tmp_path / "bad.yaml").write_text("model:\n  num_querys: 3\n")
    with pytest.raises(ValueError, match="bad.yaml.*num_querys"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_config(tmp_path / "missing.yaml")
