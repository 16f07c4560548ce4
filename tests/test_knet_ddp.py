"""K-Net through the shared trainer: 2 gloo ranks x 1 image (SyncBN) == 1 process x 2 images.

Why this comparison is exact. DDP averages the ranks' gradients, so it equals one process only
if every loss term of the full batch is the mean of the two halves' terms. K-Net normalises, as
the original does (``knet/det/kernel_update_head.py``, ``kernel_head.py``):

* the focal class loss by the number of positives (matched things + present stuff) averaged over
  ranks (mmdet ``reduce_mean``): ``(s0 / n̄ + s1 / n̄) / 2 = (s0 + s1) / (n0 + n1)``, always exact;
* the rank loss by all pixels of the rank's images: exact for equal image sizes;
* mask BCE and dice by the rank's OWN positives ``n_r``, and the kernel head's semantic focal loss
  by the rank's own foreground pixels ``f_r``: ``(S0 / n0 + S1 / n1) / 2 = (S0 + S1) / (n0 + n1)``
  only when ``n0 == n1`` (and ``f0 == f1``).

So the batch is a synthetic image and its exact left-right mirror (lossless PNGs): the same
segments, hence ``n0 == n1``, and, the stride-4 bilinear targets (align_corners False, 128 / 4)
being mirror-equivariant, ``f0 == f1`` (checked below). The gradients of the two halves still
differ (the convolutions are not mirror-symmetric), so a rank that skipped the all-reduce, or
averaged by the wrong count, would disagree. Batch norm runs in train mode (the tiny preset does
not freeze it) and becomes SyncBN under DDP, so its statistics are the global batch's. The test
transform feeds the train split (no random crop), so both runs see the same pixels.

Two AdamW steps at LR 1e-2 without warmup, Adam eps 1.0 (an update is about ``lr * grad``, see
``_knet_training.tiny_knet_config``). Measured (2026-12-01, 2-core VM): max |DDP − single| over
all parameters 3.0e-8 for a largest update of 4.6e-3 (6.5e-6 relative). The same run on two
different synthetic images (4 and 3 segments, so ``n0 != n1``) differs by 9.4e-5 (2.0e-2
relative) and its BN statistics disagree too: the 1e-3 bound below separates the two by ~50x
either way.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from _knet_training import ddp_worker, no_tensorboard, tiny_knet_config, write_mirrored_pair
from _max_training import make_trainer


REL = 1e-3  # DDP vs single process, relative to the largest parameter update (module docstring)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_equal_positives(root) -> None:
    gt = json.loads((root / "train" / "panoptic.json").read_text())
    a, b = (gt["annotations"][i]["segments_info"] for i in range(2))
    assert [(s["category_id"], s["area"]) for s in a] == [(s["category_id"], s["area"]) for s in b]
    assert len(a) >= 3
    pans = [np.asarray(Image.open(root / "train" / "panoptic" / f"{i:06d}.png").convert("RGB")).astype(np.int64)
            for i in range(2)]
    ids = [p[..., 0] + 256 * p[..., 1] + 65536 * p[..., 2] for p in pans]
    np.testing.assert_array_equal(ids[1], ids[0][:, ::-1])
    for s in a:
        masks = torch.stack([torch.from_numpy(i == s["id"]).float() for i in ids])[:, None]
        soft = F.interpolate(masks, scale_factor=0.25, mode="bilinear", align_corners=False)
        torch.testing.assert_close(soft[1], soft[0].flip(-1), atol=1e-6, rtol=0)
        assert int((soft[0] > 0).sum()) == int((soft[1] > 0).sum())


@pytest.mark.slow
def test_tiny_knet_ddp_matches_single_process(tmp_path, monkeypatch):
    import kmax_deeplab.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "MetricWriter", trainer_module.MetricWriter)  # restored afterwards
    no_tensorboard()
    root = write_mirrored_pair(tmp_path / "data")
    _check_equal_positives(root)
    steps, batch = 2, 2
    mp.spawn(ddp_worker, args=(2, _free_port(), str(root), str(tmp_path), steps, batch), nprocs=2, join=True)
    cfg = tiny_knet_config(root, steps=steps, batch=batch)
    init = {k: v.clone() for k, v in make_trainer(cfg, tmp_path / "init", deterministic_data=True)
            .model.state_dict().items()}
    single = make_trainer(cfg, tmp_path / "single", deterministic_data=True)
    single.train()
    ref = single.model.state_dict()
    r0 = torch.load(tmp_path / "knet_rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "knet_rank1.pt", weights_only=True)
    assert bool(r0.pop("__sync_bn__")) and bool(r1.pop("__sync_bn__"))  # SyncBN was active
    assert r0.keys() == ref.keys()
    params = {n for n, _ in single.model.named_parameters()}
    moved, err, size = 0, 0.0, 0.0
    for k, v in ref.items():
        if k.endswith("num_batches_tracked"):
            assert torch.equal(r0[k], v), k
            continue
        torch.testing.assert_close(r1[k], r0[k], atol=1e-6, rtol=0, msg=k)  # ranks agree
        if k in params:
            moved += not torch.equal(v, init[k])
            err = max(err, float((r0[k] - v).abs().max()))
            size = max(size, float((v - init[k]).abs().max()))
        else:  # BN running statistics: SyncBN reduces in another order
            torch.testing.assert_close(r0[k], v, atol=1e-4, rtol=1e-4, msg=k)
    print(f"max |ddp - single| {err:.3g}, largest update {size:.3g}, parameters moved {moved} of {len(params)}")
    assert moved >= 0.9 * len(params)
    assert err <= REL * size, (err, size)
