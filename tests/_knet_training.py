"""Helpers of the K-Net DDP test: a mirrored two-image dataset, the tiny config and one DDP rank."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_mirrored_pair(root: Path, *, seed: int = 0) -> Path:
    """A train split of two images: synthetic image 0 and its exact left-right mirror.

    Written losslessly (PNG images and panoptic PNGs), with the same ``segments_info`` (ids,
    categories, areas; boxes mirrored), so the two halves have the same number of thing and stuff
    positives and the same count of foreground target pixels. Returns ``root``.
    """
    from kmax_deeplab.data.synthetic import write_synthetic_dataset

    src = root / "_src"
    write_synthetic_dataset(src, 1, 1, image_size=128, seed=seed)
    gt = json.loads((src / "train" / "panoptic.json").read_text())
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "panoptic").mkdir(parents=True)
    img = np.asarray(Image.open(src / "train" / "images" / gt["images"][0]["file_name"]).convert("RGB"))
    pan = np.asarray(Image.open(src / "train" / "panoptic" / gt["annotations"][0]["file_name"]).convert("RGB"))
    images, annotations = [], []
    for i, (im, pm) in enumerate(((img, pan), (img[:, ::-1], pan[:, ::-1]))):
        Image.fromarray(np.ascontiguousarray(im)).save(root / "train" / "images" / f"{i:06d}.png")
        Image.fromarray(np.ascontiguousarray(pm)).save(root / "train" / "panoptic" / f"{i:06d}.png")
        images.append({**gt["images"][0], "id": i, "file_name": f"{i:06d}.png"})
        segs = []
        for s in gt["annotations"][0]["segments_info"]:
            s = dict(s)
            if i == 1 and "bbox" in s:
                x, y, w, h = s["bbox"]
                s["bbox"] = [im.shape[1] - x - w, y, w, h]
            segs.append(s)
        annotations.append({"image_id": i, "file_name": f"{i:06d}.png", "segments_info": segs})
    (root / "train" / "panoptic.json").write_text(json.dumps({**gt, "images": images, "annotations": annotations}))
    return root


def tiny_knet_config(root: str, *, steps: int, batch: int):
    """``synthetic/knet_tiny`` on ``root``: no augmentation, LR 1e-2 without warmup, Adam eps 1.0.

    Adam's eps 1.0 makes an update about ``lr * grad``, so rounding-level gradient differences
    stay rounding-level (with eps 1e-8 the first step is ``lr * sign(grad)``; see
    ``tests/_max_training.tiny_config``)."""
    from kmax_deeplab.config import get_preset

    cfg = get_preset("synthetic/knet_tiny")
    cfg.data.root = str(root)
    cfg.data.min_scale = cfg.data.max_scale = 1.0
    cfg.data.flip = False
    cfg.model.train_short = (128, 128)
    s = cfg.solver
    s.max_iters, s.batch_size, s.warmup_iters, s.eps, s.base_lr = steps, batch, 0, 1.0, 1e-2
    s.log_period, s.checkpoint_period, s.eval_period, s.device = 1, 0, 0, "cpu"
    return cfg


def no_tensorboard() -> None:
    """Open the trainer's metric writer without TensorBoard (its import pulls in TensorFlow, ~8 s per
    process here); metrics.jsonl is still written. Irrelevant to what the test compares."""
    import functools

    import kmax_deeplab.engine.trainer as trainer_module
    from kmax_deeplab.engine.logging import MetricWriter

    trainer_module.MetricWriter = functools.partial(MetricWriter, tensorboard=False)


def ddp_worker(rank: int, world_size: int, port: int, root: str, out: str, steps: int, batch: int) -> None:
    """One rank: train the tiny K-Net for ``steps`` global batches of ``batch`` and save its state."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from kmax_deeplab.engine.distributed import cleanup_distributed, init_distributed
    from kmax_deeplab.engine.sync_bn import GlooSyncBatchNorm

    from _max_training import make_trainer

    no_tensorboard()
    info = init_distributed("cpu")
    trainer = make_trainer(tiny_knet_config(root, steps=steps, batch=batch), Path(out) / "ddp", dist=info,
                           deterministic_data=True)
    trainer.train()
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    state["__sync_bn__"] = torch.tensor(any(isinstance(m, GlooSyncBatchNorm) for m in trainer.model.modules()))
    torch.save(state, Path(out) / f"knet_rank{rank}.pt")
    cleanup_distributed()
