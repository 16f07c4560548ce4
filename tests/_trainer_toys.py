"""Small stand-ins for the trainer tests: a model with BN/LN/embeddings, a toy criterion,
a toy dataset with random augmentation. Importable by spawned worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kmax_deeplab.config import SolverConfig


class ToyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8, eps=1e-3, momentum=0.01)
        self.gamma = nn.Parameter(torch.full((8,), 0.5))  # ConvNeXt-style layer scale


class ToyModel(nn.Module):
    """conv-BN backbone + head; also an Embedding-named cluster-centre table and an rpe."""

    def __init__(self, drop: float = 0.0) -> None:
        super().__init__()
        self.backbone = ToyBackbone()
        self.head = nn.Conv2d(8, 2, 1)
        self.norm = nn.LayerNorm(2)
        self._cluster_centers = nn.Embedding(4, 2)
        self._rpe = nn.Module()
        self._rpe._embeddings = nn.Parameter(torch.randn(5, 2) * 0.1)
        self.drop = drop

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images / 127.5 - 1.0
        b = self.backbone
        x = F.relu(b.bn(b.conv(x))) * b.gamma.view(1, -1, 1, 1)
        if self.training and self.drop > 0:
            x = F.dropout(x, self.drop)
        y = self.head(x)  # [B,2,H,W]
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = y + self._cluster_centers.weight.sum() * 0.01 + self._rpe._embeddings.mean()
        return {"pred": y}


class ToyCriterion(nn.Module):
    def forward(self, outputs, targets):
        pred = outputs["pred"]
        assert pred.dtype == torch.float32
        tgt = torch.stack([t["target"] for t in targets])
        return {"loss_mse": F.mse_loss(pred, tgt), "loss_reg": 0.1 * pred.pow(2).mean()}


class ToyDataset(Dataset):
    """Deterministic images + a random (RNG-driven) augmentation, like the real transforms."""

    def __init__(self, n: int = 24, size: int = 8) -> None:
        g = torch.Generator().manual_seed(123)
        self.images = torch.rand(n, 3, size, size, generator=g) * 255
        self.targets = torch.randn(n, 2, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.images[i] + torch.rand(()) * 10  # uses the global torch RNG
        return {"image": image, "target": self.targets[i]}


def toy_collate(samples):
    return {"images": torch.stack([s["image"] for s in samples]),
            "targets": [{"target": s["target"]} for s in samples]}


def toy_solver(**kw) -> SolverConfig:
    base = dict(batch_size=4, max_iters=8, base_lr=1e-2, warmup_iters=2, warmup_factor=0.1,
                checkpoint_period=4, eval_period=0, log_period=2, backbone_lr_multiplier=0.1)
    base.update(kw)
    return SolverConfig(**base)


def ddp_worker(rank: int, world_size: int, port: int, out: str, steps: int) -> None:
    """One rank of the DDP equivalence test: train ``steps`` and save rank-local params."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from kmax_deeplab.engine.distributed import cleanup_distributed, init_distributed
    from kmax_deeplab.engine.sync_bn import GlooSyncBatchNorm
    from kmax_deeplab.engine.trainer import Trainer

    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = ToyModel()
    trainer = Trainer(toy_solver(max_iters=steps, checkpoint_period=0), model, ToyCriterion(),
                      ToyDataset(), toy_collate, output_dir=Path(out) / f"run{world_size}",
                      dist=info, progress=False)
    trainer.train()
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    state["__sync_bn__"] = torch.tensor(
        any(isinstance(m, GlooSyncBatchNorm) for m in trainer.model.modules()))
    torch.save(state, Path(out) / f"state_ws{world_size}_rank{rank}.pt")
    cleanup_distributed()
