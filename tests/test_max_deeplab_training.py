"""MaX-DeepLab through the shared trainer: it learns, resumes bit-identically, and DDP = one process.

The tiny preset (``synthetic/max_deeplab_tiny``: the MaX-S architecture at 1/8 width, one
block per stage, 16 slots) on the synthetic dataset, CPU.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from _max_training import ddp_worker, make_trainer, tiny_config

STEPS = 30
DROP = 0.5  # required fall of the mean total loss, first 10 vs last 10 steps (measured 1.0 at these settings)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from kmax_deeplab.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 16, 1, image_size=128, seed=0)
    return root


@pytest.mark.slow
def test_tiny_max_loss_falls_on_synthetic_data(tmp_path, synthetic_root):
    from kmax_deeplab.engine.logging import read_metrics

    cfg = tiny_config(synthetic_root, steps=STEPS, batch=4)
    out = make_trainer(cfg, tmp_path / "run").train()
    assert out["iteration"] == STEPS and out["skipped_steps"] == 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {"loss/loss_cls", "loss/loss_dice", "loss/loss_mask_id", "loss/loss_insdis", "loss/loss_sem"} <= set(rows[0])
    totals = [r["loss/total"] for r in rows]
    first, last = sum(totals[:10]) / 10, sum(totals[-10:]) / 10
    assert last < first - DROP, (first, last)


@pytest.mark.slow
def test_tiny_max_resume_is_bit_identical(tmp_path, synthetic_root):
    # random crops and flips on: the data RNG must be restored too
    cfg = tiny_config(synthetic_root, steps=3, batch=2, checkpoint_period=1)
    cfg.data.min_scale, cfg.data.max_scale, cfg.data.flip = 0.5, 1.5, True
    straight = make_trainer(cfg, tmp_path / "a")
    init = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight.train()
    ref = {k: v.clone() for k, v in straight.model.state_dict().items()}
    assert not torch.equal(ref["encoder.memory_feature"], init["encoder.memory_feature"])
    first = make_trainer(cfg, tmp_path / "b")
    first.train(max_iters=2)
    torch.rand(100)  # a fresh process would be in another RNG state
    resumed = make_trainer(cfg, tmp_path / "b")
    assert resumed.resume_if_possible() and resumed.iteration == 2
    resumed.train()
    got = resumed.model.state_dict()
    assert [k for k in ref if not torch.equal(got[k], ref[k])] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tiny_max_ddp_matches_single_process(tmp_path, synthetic_root):
    """2 gloo ranks x 1 image with SyncBN == 1 process x 2 images (same batches: test-time transform).

    Two steps (the first has LR 0: warmup from 0), Adam eps 1.0 (see ``tiny_config``)."""
    steps, batch = 2, 2
    mp.spawn(ddp_worker, args=(2, _free_port(), str(synthetic_root), str(tmp_path), steps, batch, 1.0), nprocs=2,
             join=True)
    cfg = tiny_config(synthetic_root, steps=steps, batch=batch, adam_eps=1.0)
    init = make_trainer(cfg, tmp_path / "init", deterministic_data=True).model.state_dict()
    init = {k: v.clone() for k, v in init.items()}
    single = make_trainer(cfg, tmp_path / "single", deterministic_data=True)
    single.train()
    ref = single.model.state_dict()
    r0 = torch.load(tmp_path / "max_rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "max_rank1.pt", weights_only=True)
    assert bool(r0.pop("__sync_bn__")) and bool(r1.pop("__sync_bn__"))  # SyncBN was active
    assert r0.keys() == ref.keys()
    params = {n for n, _ in single.model.named_parameters()}
    moved = 0
    for k, v in ref.items():
        if k.endswith("num_batches_tracked"):
            assert torch.equal(r0[k], v), k
            continue
        stats = k.endswith(("running_mean", "running_var"))
        # measured: parameters 1.2e-5, BN running statistics 8.7e-4 (SyncBN reduces in another order)
        torch.testing.assert_close(r0[k], v, atol=3e-3 if stats else 5e-5, rtol=0, msg=k)
        torch.testing.assert_close(r1[k], r0[k], atol=1e-6, rtol=0, msg=k)  # ranks agree
        moved += k in params and not torch.equal(v, init[k])
    assert moved >= 100  # the step really changed the model (118 of 253 parameters beyond fp32 resolution)


PQ_ITERS = 250
PQ_MIN = 25.0  # measured 37.8 (below)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("KMAX_LONG_TESTS"),
                    reason="18 min of training on the loaded 2-core VM (idle: not measured); set KMAX_LONG_TESTS=1")
def test_tiny_max_reaches_pq_on_synthetic_validation(tmp_path):
    """250 steps of 8 images of the tiny preset's schedule lift synthetic-validation PQ from 0 to >= 25.

    Measured on the 2-core VM (seed 0, 128 train / 24 val synthetic images, 2026-12-01):
    untrained PQ 0.0, trained PQ 37.8 (things 4.1, stuff 82.8), 1,108 s of training on the
    loaded machine. Opt-in because of its cost: the suite keeps the loss-falls test above.
    """
    from kmax_deeplab.config import get_preset
    from kmax_deeplab.data.synthetic import write_synthetic_dataset
    from kmax_deeplab.engine.build import build_training, seed_everything, train_from_config
    from kmax_deeplab.engine.distributed import DistInfo

    root = tmp_path / "data"
    write_synthetic_dataset(root, 128, 24, image_size=128, seed=0)
    cfg = get_preset("synthetic/max_deeplab_tiny")
    cfg.data.root = str(root)
    cfg.solver.eval_period = cfg.solver.checkpoint_period = 0
    cfg.solver.device = "cpu"
    seed_everything(cfg.solver.seed)
    parts = build_training(cfg)
    untrained = parts.evaluate_fn(parts.model.eval(), DistInfo())["PQ"]
    out = train_from_config(cfg, output_dir=tmp_path / "run", progress=False, max_iters=PQ_ITERS)
    trained = parts.evaluate_fn(out["trainer"].model.eval(), DistInfo())["PQ"]
    assert untrained < 5.0 and trained >= PQ_MIN, (untrained, trained)
