"""The model-family seam (issue 10): one table, and nothing above the models names a family.

``toy_semantic`` is a family defined only in this file (a two-conv model whose query q is class
q, a cross-entropy criterion, an argmax post-processing and a foreign ``.npz`` importer). Added
as one row of ``FAMILIES``, it trains, predicts, evaluates and converts through the public
``kmax`` commands, with nothing in ``engine/``, ``commands/`` or ``checkpoints/`` knowing it.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kmax_deeplab
from kmax_deeplab.geometry import FixedCanvas, ResizePad
from kmax_deeplab.modeling import families
from kmax_deeplab.modeling.sections import ModelConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "kmax_deeplab"
TOY = "toy_semantic"


# ---------------------------------------------------------------------- the toy family
@dataclass
class ToyModelConfig(ModelConfig):
    width: int = 8


@dataclass
class ToyLossConfig:
    ce_weight: float = 1.0


@dataclass
class ToyPostProcessConfig:
    min_area: int = 0


class ToyModel(nn.Module):
    """Query q = class q: stride-4 per-class mask logits, fixed-ish class logits."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 5, stride=4, padding=2)  # H = 4k+1 -> k+1
        self.head = nn.Conv2d(width, num_classes, 1)
        self.classes = nn.Parameter(torch.cat([torch.eye(num_classes), torch.zeros(num_classes, 1)], 1) * 5)

    def forward(self, images):
        masks = self.head(F.relu(self.stem((images - 127.5) / 127.5)))
        return {"pred_logits": self.classes.expand(images.shape[0], -1, -1), "pred_masks": masks}


def toy_criterion(cfg):
    c, w = cfg.model.num_classes, cfg.loss.ce_weight

    def criterion(outputs, targets):
        semantic = torch.stack([t["semantic"] for t in targets])  # [B, h, w], C = ignore
        return {"loss_ce": w * F.cross_entropy(outputs["pred_masks"], semantic, ignore_index=c)}

    return criterion


def toy_postprocess(output, *, cfg, is_thing, train_id_to_category_id, canvas_size, valid_size,
                    output_size, semantic=False):
    up = F.interpolate(output["pred_masks"][None], size=tuple(canvas_size), mode="bilinear")
    up = up[..., :valid_size[0], :valid_size[1]]
    sem = F.interpolate(up, size=tuple(output_size), mode="bilinear")[0].argmax(0)
    panoptic = torch.zeros(sem.shape, dtype=torch.int32)
    segments = []
    for c in sem.unique().tolist():
        area = int((sem == c).sum())
        if area <= cfg.postprocess.min_area:
            continue
        panoptic[sem == c] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": int(train_id_to_category_id[c]),
                         "isthing": bool(is_thing[c]), "score": 1.0, "area": area})
    out = {"panoptic": panoptic, "segments_info": segments}
    if semantic:
        out["semantic"] = sem
    return out


FOREIGN = {"stem/kernel": "stem.weight", "stem/bias": "stem.bias", "head/kernel": "head.weight",
           "head/bias": "head.bias", "class_table": "classes"}


def toy_import(src, model, cfg, strict=True):
    foreign = dict(np.load(src))
    if strict and set(foreign) != set(FOREIGN):
        raise ValueError(f"{src}: expected {sorted(FOREIGN)}, got {sorted(foreign)}")
    return {FOREIGN[k]: torch.from_numpy(v) for k, v in foreign.items()}


TOY_FAMILY = families.Family(
    name=TOY, description="test-only toy family",
    sections={"model": ToyModelConfig, "loss": ToyLossConfig, "postprocess": ToyPostProcessConfig},
    build_model=lambda cfg: ToyModel(cfg.model.num_classes, cfg.model.width),
    build_criterion=toy_criterion, postprocess=toy_postprocess,
    input_geometry=lambda cfg: (FixedCanvas(tuple(cfg.model.image_size)) if cfg.model.backbone != "resize_pad"
                                else ResizePad(short=48, long=64, train_short=(36, 56))),
    build_optimizer=lambda model, cfg: torch.optim.Adam(model.parameters(), lr=cfg.solver.base_lr),
    build_scheduler=lambda opt, cfg: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
    importers={"toy_npz": toy_import})


@pytest.fixture
def toy_family(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, TOY, TOY_FAMILY)


TOY_YAML = """\
base: synthetic/kmax_tiny
name: toy
model: {meta_architecture: toy_semantic, image_size: [65, 65], width: 8}
data: {crop_size: [65, 65], num_workers: 0}
solver: {batch_size: 2, max_iters: 40, base_lr: 0.02, warmup_iters: 0, checkpoint_period: 0,
         eval_period: 0, log_period: 1, device: cpu}
"""


# ---------------------------------------------------------------------- tests
def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                pkg = path.parent.relative_to(SRC.parent).parts[: len(path.parent.relative_to(SRC.parent).parts) - node.level + 1]
                base = ".".join(pkg) + (f".{node.module}" if node.module else "")
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def test_nothing_above_the_models_imports_a_family_package():
    """engine/, commands/ and checkpoints/ reach families only through modeling.families."""
    family_pkgs = sorted({p.name for p in (SRC / "modeling").iterdir()
                          if p.is_dir() and (p / "family.py").is_file()} | {"kmax", "max_deeplab", "knet"})
    forbidden = tuple(f"kmax_deeplab.modeling.{f}" for f in family_pkgs)
    offenders = []
    files = [p for d in ("engine", "commands", "checkpoints") for p in (SRC / d).rglob("*.py")]
    files += [SRC / "cli.py", SRC / "train.py", SRC / "api.py"]
    for path in files:
        for name in _imports(path):
            if name == "kmax_deeplab.modeling.kmax" or name.startswith(forbidden):
                offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert offenders == []


def test_the_import_scan_sees_a_family_import(tmp_path):
    """The scan above can fail: absolute, from-package and relative spellings are all caught."""
    bad = SRC / "engine" / "_scan_probe.py"
    names = []
    try:
        bad.write_text("from kmax_deeplab.modeling import kmax\nfrom ..modeling.kmax import build_kmax\n")
        names = _imports(bad)
    finally:
        bad.unlink()
    assert "kmax_deeplab.modeling.kmax" in names
    assert "kmax_deeplab.modeling.kmax.build_kmax" in names


def test_every_family_row_is_complete():
    for name, fam in families.FAMILIES.items():
        assert fam.name == name
        assert issubclass(fam.sections["model"], ModelConfig)
        assert {"model", "loss", "postprocess"} <= set(fam.sections)
    with pytest.raises(ValueError, match="unknown model family 'nope'; available: kmax"):
        families.get_family("nope")


def test_kmax_info_lists_the_families(toy_family, capsys):
    from kmax_deeplab.cli import main

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["families"][TOY] == {"description": "test-only toy family", "importers": ["toy_npz"], "presets": []}
    assert "synthetic/kmax_tiny" in info["families"]["kmax"]["presets"]
    assert info["families"]["kmax"]["importers"] == ["deeplab2", "detectron2", "imagenet"]


def test_build_model_from_preset_config_yaml_and_folder(tmp_path):
    from kmax_deeplab.checkpoints.native import save_native
    from kmax_deeplab.modeling.kmax import KMaXDeepLab

    torch.manual_seed(0)
    model = kmax_deeplab.build_model("synthetic/kmax_tiny", overrides=["model.num_queries=8"])
    assert isinstance(model, KMaXDeepLab) and model.num_queries == 8
    cfg = kmax_deeplab.load_config("synthetic/kmax_tiny", ["model.num_queries=8"])
    save_native(tmp_path / "native", model.state_dict(), cfg)
    loaded = kmax_deeplab.build_model(tmp_path / "native")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    (tmp_path / "c.yaml").write_text("base: synthetic/kmax_tiny\nmodel: {num_queries: 8}\n")
    assert isinstance(kmax_deeplab.build_model(tmp_path / "c.yaml"), KMaXDeepLab)
    assert kmax_deeplab.build_model(cfg).num_queries == 8
    with pytest.raises(ValueError, match=r"model family 'kmax'.*unknown key\(s\) \['width'\]; valid keys"):
        _load_text(tmp_path, "base: synthetic/kmax_tiny\nmodel: {width: 3}\n")


def _load_text(tmp_path, text):
    (tmp_path / "bad.yaml").write_text(text)
    return kmax_deeplab.load_config(tmp_path / "bad.yaml")


def test_toy_family_config_sections(tmp_path, toy_family):
    (tmp_path / "toy.yaml").write_text(TOY_YAML)
    cfg = kmax_deeplab.load_config(tmp_path / "toy.yaml")
    assert isinstance(cfg.model, ToyModelConfig) and isinstance(cfg.loss, ToyLossConfig)
    assert cfg.model.num_classes == 7 and cfg.data.dataset == "synthetic"  # from the kMaX preset
    with pytest.raises(ValueError, match=r"model family 'toy_semantic'.*\['decoder_filters'\].*valid keys"):
        _load_text(tmp_path, TOY_YAML.replace("width: 8", "decoder_filters: [1]"))
    with pytest.raises(ValueError, match="toy_semantic.*valid keys.*ce_weight"):
        kmax_deeplab.load_config(tmp_path / "toy.yaml", ["loss.class_weight=2"])


@pytest.mark.slow
@pytest.mark.parametrize("geometry", ["fixed_canvas", "resize_pad"])
def test_toy_family_trains_predicts_evaluates_and_converts(tmp_path, toy_family, geometry):
    """With ``resize_pad`` the training batches have variable sizes (short side 36..56),
    padded to 32 by the collate, and test images are resized to 48 x 64."""
    from kmax_deeplab.checkpoints.native import load_native
    from kmax_deeplab.cli import main
    from kmax_deeplab.data.synthetic import write_synthetic_dataset
    from kmax_deeplab.engine.logging import read_metrics

    root = tmp_path / "data"
    write_synthetic_dataset(root, 6, 2, image_size=64, seed=0)
    (tmp_path / "toy.yaml").write_text(TOY_YAML.replace("width: 8", f"width: 8, backbone: {geometry}"))
    run = tmp_path / "run"
    # train (the in-training validation runs at the end, through the family's post-processing)
    assert main(["train", "--config", str(tmp_path / "toy.yaml"), "--output-dir", str(run),
                 "--data-root", str(root), "--no-progress"]) == 0
    metrics = read_metrics(run / "metrics.jsonl")
    losses = [m["loss/total"] for m in metrics if "loss/total" in m]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])  # it learns
    val_pq = [m["val/PQ"] for m in metrics if "val/PQ" in m][-1]
    # predict with the exported folder, evaluate with the official algorithm
    preds = tmp_path / "preds"
    assert main(["predict", str(root / "val" / "images"), "--output", str(preds), "--model",
                 str(run / "model_final"), "--quiet", "--no-overlay"]) == 0
    assert main(["evaluate", "--gt-json", str(root / "val" / "panoptic.json"), "--gt-folder",
                 str(root / "val" / "panoptic"), "--pred-json", str(preds / "predictions.json"),
                 "--pred-folder", str(preds), "--no-progress", "--output", str(tmp_path / "pq.json")]) == 0
    pq = json.loads((tmp_path / "pq.json").read_text())["panoptic"]["All"]["pq"]
    assert val_pq > 0 and abs(100 * pq - val_pq) < 1e-6
    # convert foreign weights (the trained ones under foreign names) into a native folder
    _, state = load_native(run / "model_final")
    inverse = {v: k for k, v in FOREIGN.items()}
    np.savez(tmp_path / "foreign.npz", **{inverse[k]: v.numpy() for k, v in state.items()})
    assert main(["convert", "--from", "toy_npz", str(tmp_path / "foreign.npz"), str(tmp_path / "conv"),
                 "--config", str(tmp_path / "toy.yaml")]) == 0
    model = kmax_deeplab.build_model(tmp_path / "conv")
    assert isinstance(model, ToyModel)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert main(["convert", "--from", "deeplab2", str(tmp_path / "foreign.npz"), str(tmp_path / "c2"),
                 "--config", str(tmp_path / "toy.yaml")]) == 1  # not an importer of this family
