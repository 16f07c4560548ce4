"""Helpers of the MaX-DeepLab training tests: the tiny preset on a synthetic dataset, and one DDP rank."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def tiny_config(root: str, *, steps: int, batch: int, checkpoint_period: int = 0, adam_eps: float | None = None):
    """``synthetic/max_deeplab_tiny`` on ``root`` for a short run without augmentation randomness.

    ``adam_eps`` overrides Adam's eps (1e-7): the DDP test uses 1.0 so that an update is about
    ``lr * grad`` and rounding-level gradient differences stay rounding-level (with eps 1e-7 the
    first Adam step is ``lr * sign(grad)``, which turns the zero gradient of a bias in front of a
    BN, pure rounding noise, into a full step of either sign)."""
    from kmax_deeplab.config import get_preset

    cfg = get_preset("synthetic/max_deeplab_tiny")
    cfg.data.root = str(root)
    cfg.data.min_scale = cfg.data.max_scale = 1.0
    cfg.data.flip = False
    s = cfg.solver
    s.max_iters, s.batch_size, s.warmup_iters = steps, batch, 2
    s.log_period, s.checkpoint_period, s.eval_period, s.device = 1, checkpoint_period, 0, "cpu"
    if adam_eps is not None:
        s.eps = adam_eps
    return cfg


def make_trainer(cfg, out: Path, dist=None, *, deterministic_data: bool = False):
    """A :class:`Trainer` from ``build_training``; ``deterministic_data`` feeds the train split
    through the test-time transform (no random crop), so that runs with different data-loading
    RNG streams (one process vs two ranks) see identical batches."""
    from kmax_deeplab.engine.build import build_dataset, build_training, seed_everything
    from kmax_deeplab.engine.trainer import Trainer

    seed_everything(cfg.solver.seed)
    parts = build_training(cfg, with_eval=False)
    dataset = build_dataset(cfg, "train", is_train=False) if deterministic_data else parts.train_dataset
    return Trainer(cfg.solver, parts.model, parts.criterion, dataset, parts.collate_fn,
                   output_dir=out, dist=dist, prepare_batch=parts.prepare_batch, progress=False,
                   optimizer_factory=parts.optimizer_factory, scheduler_factory=parts.scheduler_factory)


def ddp_worker(rank: int, world_size: int, port: int, root: str, out: str, steps: int, batch: int,
               adam_eps: float) -> None:
    """One rank: train the tiny MaX for ``steps`` global batches of ``batch`` and save its state."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from kmax_deeplab.engine.distributed import cleanup_distributed, init_distributed
    from kmax_deeplab.engine.sync_bn import GlooSyncBatchNorm

    info = init_distributed("cpu")
    trainer = make_trainer(tiny_config(root, steps=steps, batch=batch, adam_eps=adam_eps), Path(out) / "ddp", dist=info,
                           deterministic_data=True)
    trainer.train()
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    state["__sync_bn__"] = torch.tensor(any(isinstance(m, GlooSyncBatchNorm) for m in trainer.model.modules()))
    torch.save(state, Path(out) / f"max_rank{rank}.pt")
    cleanup_distributed()
