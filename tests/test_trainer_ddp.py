"""DDP + SyncBN: 2 gloo processes with half the batch each == 1 process with the full batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from kmax_deeplab.engine.distributed import DistInfo
from kmax_deeplab.engine.trainer import Trainer

from _trainer_toys import ToyCriterion, ToyDataset, ToyModel, ddp_worker, toy_collate, toy_solver

STEPS = 4
# fp32 reductions happen in a different order (gloo all-reduce, SyncBN statistics), so the
# two runs agree to rounding, not bit for bit; AdamW's normalised steps keep this ~1e-6.
ATOL = 2e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    mp.spawn(ddp_worker, args=(2, _free_port(), str(tmp_path), STEPS), nprocs=2, join=True)

    torch.manual_seed(0)
    single = Trainer(toy_solver(max_iters=STEPS, checkpoint_period=0), ToyModel(), ToyCriterion(),
                     ToyDataset(), toy_collate, output_dir=tmp_path / "run1", dist=DistInfo(),
                     progress=False)
    single.train()
    ref = single.model.state_dict()

    r0 = torch.load(tmp_path / "state_ws2_rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "state_ws2_rank1.pt", weights_only=True)
    assert bool(r0.pop("__sync_bn__")) and bool(r1.pop("__sync_bn__"))  # SyncBN was active
    assert r0.keys() == ref.keys()
    for k, v in ref.items():
        if k.endswith("num_batches_tracked"):
            assert torch.equal(r0[k], v), k
            continue
        torch.testing.assert_close(r0[k], v, atol=ATOL, rtol=0, msg=k)
        torch.testing.assert_close(r1[k], r0[k], atol=1e-6, rtol=0, msg=k)  # ranks agree
    # the BN running statistics moved with the global batch (SyncBN), not a half batch:
    init = ToyModel().state_dict()
    assert not torch.allclose(ref["backbone.bn.running_mean"], init["backbone.bn.running_mean"])
