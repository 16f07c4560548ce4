"""K-Net through the shared parts: family row, presets, geometry, predictor, ``kmax convert
--from mmdet`` and the shared trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kmax_deeplab.config import get_preset, list_presets
from kmax_deeplab.data.transforms import short_long_size
from kmax_deeplab.geometry import ResizePad
from kmax_deeplab.modeling.families import FAMILIES, family_of

PHOTOS = Path(__file__).resolve().parents[1] / "src/kmax_deeplab/assets/coco_sample"


def test_presets_and_family_row():
    names = set(list_presets())
    for n in ("coco/knet_r50_fpn_1x", "coco/knet_r50_fpn_ms3x", "coco/knet_r101_fpn_ms3x",
              "coco/knet_r50_fpn_1x_instance", "synthetic/knet_tiny", "synthetic/knet_tiny_instance"):
        assert n in names, n
    cfg = get_preset("coco/knet_r50_fpn_1x")
    assert family_of(cfg) is FAMILIES["knet"]
    s = cfg.solver
    assert (s.base_lr, s.weight_decay, s.backbone_lr_multiplier, s.clip_grad_norm, s.warmup_iters) == (
        1e-4, 0.05, 0.25, 1.0, 1000)
    assert s.lr_schedule == "warmup_step" and s.lr_steps == (8 * 7393, 11 * 7393) and s.batch_size == 16
    inst = get_preset("coco/knet_r50_fpn_1x_instance")
    assert (inst.model.task, inst.model.num_classes) == ("instance", 80)
    bad = get_preset("synthetic/knet_tiny_instance")
    bad.model.num_classes = 7
    with pytest.raises(ValueError, match="model.num_classes"):
        family_of(bad).check_config(bad)


def test_keep_ratio_geometry():
    """mmdet Resize((1333, 800), keep_ratio) + Pad(32): 480x640 -> 800x1067 in 800x1088 (knet.md §13)."""
    g = family_of(get_preset("coco/knet_r50_fpn_1x")).input_geometry(get_preset("coco/knet_r50_fpn_1x"))
    assert isinstance(g, ResizePad) and (g.short, g.long, g.train_short) == (800, 1333, (800, 800))
    assert g.test_size(480, 640) == (800, 1067)
    assert short_long_size(427, 640, 800, 1333) == (800, 1199)
    assert short_long_size(300, 1200, 800, 1333) == (333, 1333)  # long side binds
    ms = get_preset("coco/knet_r50_fpn_ms3x")
    assert family_of(ms).input_geometry(ms).train_short == (640, 800)
    assert g.batch_size([(800, 1067), (800, 1199)]) == (800, 1216)
    batch, valid = g.preprocess([np.zeros((48, 64, 3), np.uint8)])
    assert valid == [(800, 1067)] and batch.shape == (1, 3, 800, 1088)
    torch.testing.assert_close(batch[0, :, 0, 1080], torch.tensor(g.pixel_mean))  # padded with the mean


def test_optimizer_groups():
    cfg = get_preset("synthetic/knet_tiny")
    fam = family_of(cfg)
    model = fam.build_model(cfg)
    opt = fam.build_optimizer(model, cfg)
    by_mult = {g["lr_multiplier"]: g for g in opt.param_groups}
    assert set(by_mult) == {1.0}  # tiny preset: backbone x1.0
    cfg.solver.backbone_lr_multiplier = 0.25
    groups = fam.build_optimizer(model, cfg).param_groups
    for g in groups:
        assert g["weight_decay"] == 0.05  # norms are not exempt in the original
        assert all(n.startswith("backbone.") == (g["lr_multiplier"] == 0.25) for n in g["names"])


@pytest.mark.slow
def test_predictor_on_real_photos_writes_valid_panoptic():
    """Untrained tiny K-Net through the shared Predictor: a valid COCO-panoptic result at the photo's size."""
    from kmax_deeplab.engine.predictor import Predictor

    cfg = get_preset("synthetic/knet_tiny")
    torch.manual_seed(0)
    pred = Predictor(family_of(cfg).build_model(cfg).eval(), cfg)
    photo = PHOTOS / "000000142238.jpg"
    out = pred(photo)
    assert out["panoptic"].shape == (427, 640)
    ids = set(np.unique(out["panoptic"]).tolist()) - {0}
    assert ids == {s["id"] for s in out["segments_info"]}
    for s in out["segments_info"]:
        assert s["area"] == int((out["panoptic"] == s["id"]).sum())


@pytest.mark.slow
def test_convert_cli_from_mmdet_and_wrong_task(tmp_path, capsys):
    from kmax_deeplab.checkpoints.mmdet import save_mmdet
    from kmax_deeplab.checkpoints.native import load_native
    from kmax_deeplab.cli import main

    cfg = get_preset("synthetic/knet_tiny")
    torch.manual_seed(0)
    model = family_of(cfg).build_model(cfg)
    pth = save_mmdet(model.state_dict(), tmp_path / "knet.pth", meta={"note": "test"})
    assert main(["convert", "--from", "mmdet", str(pth), str(tmp_path / "out"), "--config",
                 "synthetic/knet_tiny"]) == 0
    back = load_native(tmp_path / "out")[1]
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    assert main(["convert", "--from", "mmdet", str(pth), str(tmp_path / "out2"), "--config",
                 "synthetic/knet_tiny_instance"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "7 classes" in err[0] and "4 classes" in err[0], err


def _knet_trainer(data_root, out, task="panoptic", max_iters=24, checkpoint_period=0):
    from kmax_deeplab.engine.build import build_training, seed_everything
    from kmax_deeplab.engine.trainer import Trainer

    cfg = get_preset("synthetic/knet_tiny" + ("" if task == "panoptic" else "_instance"))
    cfg.data.root = str(data_root)
    cfg.solver.max_iters, cfg.solver.batch_size, cfg.solver.warmup_iters = max_iters, 2, 2
    cfg.solver.log_period, cfg.solver.checkpoint_period = 1, checkpoint_period
    seed_everything(0)
    parts = build_training(cfg, with_eval=False)
    return Trainer(cfg.solver, parts.model, parts.criterion, parts.train_dataset, parts.collate_fn,
                   output_dir=out, prepare_batch=parts.prepare_batch, progress=False,
                   optimizer_factory=parts.optimizer_factory, scheduler_factory=parts.scheduler_factory)


@pytest.mark.slow
def test_tiny_knet_resume_is_bit_identical(tmp_path):
    """Step schedule, clipping and AdamW state survive a checkpoint: 1 + 2 steps == 3 steps."""
    from kmax_deeplab.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 8, 1, image_size=128, seed=0)
    straight = _knet_trainer(tmp_path / "data", tmp_path / "a", max_iters=3, checkpoint_period=1)
    straight.train()
    ref = {k: v.clone() for k, v in straight.model.state_dict().items()}
    first = _knet_trainer(tmp_path / "data", tmp_path / "b", max_iters=3, checkpoint_period=1)
    first.train(max_iters=1)
    torch.rand(100)
    resumed = _knet_trainer(tmp_path / "data", tmp_path / "b", max_iters=3, checkpoint_period=1)
    assert resumed.resume_if_possible() and resumed.iteration == 1
    resumed.train()
    got = resumed.model.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    torch.manual_seed(0)
    assert not torch.equal(first.model.state_dict()["kernel_head.conv_seg.weight"], ref["kernel_head.conv_seg.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("task", ["panoptic"])  # the instance criterion is covered by the loss parity
def test_tiny_knet_learns_through_shared_trainer(tmp_path, task):
    from kmax_deeplab.data.synthetic import write_synthetic_dataset
    from kmax_deeplab.engine.logging import read_metrics

    write_synthetic_dataset(tmp_path / "data", 16, 1, image_size=128, seed=0)
    trainer = _knet_trainer(tmp_path / "data", tmp_path / "run", task)
    out = trainer.train()
    assert out["iteration"] == 24 and out["skipped_steps"] == 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    totals = [r["loss/total"] for r in rows]
    assert "loss/s1_loss_cls" in rows[0] and ("loss/loss_rpn_rank" in rows[0]) == (task == "panoptic")
    first, last = sum(totals[:6]) / 6, sum(totals[-6:]) / 6
    assert last < 0.85 * first, (first, last)


@pytest.mark.slow
def test_predict_cli_instance_task_writes_coco_results(tmp_path, capsys):
    """``kmax predict --task instance`` on the bundled photos: COCO instance results that
    pycocotools loads; a panoptic model is refused in one line."""
    import json

    from pycocotools.coco import COCO

    from kmax_deeplab.cli import main

    photos = sorted(PHOTOS.glob("*.jpg"))
    rc = main(["predict", *map(str, photos), "-o", str(tmp_path / "inst"), "--config",
               "synthetic/knet_tiny_instance", "--task", "instance", "--quiet"])
    assert rc == 0
    results = json.loads((tmp_path / "inst" / "instances_results.json").read_text())
    assert len(results) == 2 * 32  # min(100, 8 kernels x 4 classes) pairs per photo
    gt = COCO()
    gt.dataset = {"images": [{"id": int(p.stem), "height": 10, "width": 10} for p in photos],
                  "categories": [{"id": i, "name": str(i)} for i in range(1, 5)], "annotations": []}
    gt.createIndex()
    dt = gt.loadRes(results)  # validates image ids, categories and RLE
    assert len(dt.getAnnIds()) == 64 and {a["category_id"] for a in results} <= {1, 2, 3, 4}
    capsys.readouterr()
    assert main(["predict", str(photos[0]), "-o", str(tmp_path / "pan"), "--config", "synthetic/knet_tiny",
                 "--task", "instance", "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kmax predict")]
    assert len(err) == 1 and "needs an instance model" in err[0]


def test_zoo_entries_and_mmdet_download_path(tmp_path, monkeypatch):
    """Every K-Net zoo entry builds from its preset; an mmdet file goes download -> convert -> cache."""
    import dataclasses

    from kmax_deeplab.checkpoints import zoo
    from kmax_deeplab.checkpoints.mmdet import save_mmdet
    from kmax_deeplab.checkpoints.native import load_native

    knet = {n: e for n, e in zoo.ZOO.items() if e.source == "mmdet"}
    assert {(e.preset, e.pq, e.metric) for e in knet.values()} == {
        ("coco/knet_r50_fpn_1x", 44.3, "PQ"), ("coco/knet_r50_fpn_ms3x", 47.1, "PQ"),
        ("coco/knet_r101_fpn_ms3x", 48.4, "PQ"), ("coco/knet_r50_fpn_1x_instance", 34.0, "mask AP"),
        ("coco/knet_r101_dcn_fpn_ms3x", 49.6, "PQ"), ("coco/knet_r101_dcn_fpn_ms3x_instance", 40.5, "mask AP"),
        ("coco/knet_swin_l_fpn_ms3x", 54.6, "PQ")}
    name = "knet_r50_fpn_1x_coco_panoptic"
    monkeypatch.setitem(zoo.ZOO, name, dataclasses.replace(zoo.ZOO[name], preset="synthetic/knet_tiny"))
    cfg = get_preset("synthetic/knet_tiny")
    torch.manual_seed(0)
    model = family_of(cfg).build_model(cfg)
    pth = save_mmdet(model.state_dict(), tmp_path / "released.pth")
    out = zoo.get_zoo_checkpoint(name, cache_dir=tmp_path / "cache", url=pth.as_uri(), progress=False)
    cfg2, state = load_native(out)
    assert cfg2.model.meta_architecture == "knet"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
