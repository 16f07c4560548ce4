"""Trainer loop on small stand-ins: exact resume, NaN policy, atomic checkpoints, logs, data stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kmax_deeplab.engine import checkpointer as ckpt
from kmax_deeplab.engine.logging import read_metrics
from kmax_deeplab.engine.sampling import StreamBatchSampler
from kmax_deeplab.engine.trainer import Trainer

from _trainer_toys import ToyCriterion, ToyDataset, ToyModel, toy_collate, toy_solver


def _trainer(out: Path, criterion=None, **solver_kw) -> Trainer:
    torch.manual_seed(0)
    model = ToyModel(drop=0.2)  # dropout: the torch RNG must be restored on resume
    return Trainer(toy_solver(**solver_kw), model, criterion or ToyCriterion(), ToyDataset(),
                   toy_collate, output_dir=out, progress=False)


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resume_is_bit_identical(tmp_path):
    straight = _trainer(tmp_path / "a", max_iters=8, checkpoint_period=4, grad_accum_steps=2)
    straight.train()
    ref = _params(straight)

    first = _trainer(tmp_path / "b", max_iters=8, checkpoint_period=4, grad_accum_steps=2)
    first.train(max_iters=4)  # stop half-way (as if killed right after the checkpoint)
    assert (tmp_path / "b" / "last_checkpoint").read_text().strip() == "model_0000004.pt"
    # burn some global RNG, as a fresh process would be in a different state
    torch.rand(100)
    resumed = _trainer(tmp_path / "b", max_iters=8, checkpoint_period=4, grad_accum_steps=2)
    assert resumed.resume_if_possible()
    assert resumed.iteration == 4 and resumed.samples_seen == 16
    resumed.train()
    got = _params(resumed)
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    # and the run really moved: not equal to the initial weights
    torch.manual_seed(0)
    init = ToyModel(drop=0.2).state_dict()
    assert not torch.equal(init["head.weight"], ref["head.weight"])


def test_checkpoint_contents_load_weights_only(tmp_path):
    tr = _trainer(tmp_path, max_iters=4, checkpoint_period=2)
    tr.train()
    state = torch.load(tmp_path / "model_0000004.pt", weights_only=True)
    assert state["iteration"] == 4 and state["samples_seen"] == 16
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= state.keys()
    assert state["scheduler"]["last_epoch"] == 4
    rng = state["rng"][0]
    assert {"python", "numpy", "torch", "cuda"} <= rng.keys()
    assert (tmp_path / "model_0000002.pt").is_file()


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, max_iters=8, checkpoint_period=2)
    tr.train(max_iters=2)
    good = (tmp_path / "model_0000002.pt").read_bytes()

    real_save = torch.save

    def dying_save(obj, f, *a, **kw):  # write half a file, then "lose power"
        real_save(obj, f, *a, **kw)
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise KeyboardInterrupt("simulated crash during save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        tr.train(max_iters=4)
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000002.pt"
    assert (tmp_path / "model_0000002.pt").read_bytes() == good
    assert not (tmp_path / "model_0000004.pt").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind
    resumed = _trainer(tmp_path, max_iters=8, checkpoint_period=2)
    assert resumed.resume_if_possible() and resumed.iteration == 2


class NaNAt:
    """Toy criterion whose ``loss_reg`` term is NaN on the k-th call."""

    def __init__(self, k: int) -> None:
        self.k, self.calls, self.base = k, 0, ToyCriterion()

    def __call__(self, outputs, targets):
        losses = self.base(outputs, targets)
        if self.calls == self.k:
            losses["loss_reg"] = losses["loss_reg"] * float("nan")
        self.calls += 1
        return losses


def test_nan_loss_raises_with_iteration_and_term(tmp_path):
    tr = _trainer(tmp_path, criterion=NaNAt(3), max_iters=8)
    with pytest.raises(FloatingPointError, match=r"iteration 3 .*loss_reg=nan"):
        tr.train()


def test_nan_loss_skip_policy_skips_the_update(tmp_path):
    tr = _trainer(tmp_path, criterion=NaNAt(2), max_iters=3, nan_policy="skip", checkpoint_period=0)
    tr.train(max_iters=2)
    before = _params(tr)
    out = tr.train()  # step 2 is the NaN one, and the last
    assert out["skipped_steps"] == 1 and out["iteration"] == 3
    after = _params(tr)
    for k in before:
        if k.endswith("num_batches_tracked") or "running" in k:
            continue  # BN statistics are updated in the forward pass
        assert torch.equal(before[k], after[k]), k
    assert all(torch.isfinite(v.float()).all() for v in after.values())


def test_metrics_jsonl_and_tensorboard(tmp_path):
    tr = _trainer(tmp_path, max_iters=4, log_period=2)
    tr.train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [2, 4]
    assert {"loss/loss_mse", "loss/loss_reg", "loss/total", "lr"} <= rows[0].keys()
    assert rows[0]["loss/total"] == pytest.approx(rows[0]["loss/loss_mse"] + rows[0]["loss/loss_reg"])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    json.dumps(rows)


def test_evaluate_fn_called_periodically(tmp_path):
    calls = []

    def evaluate(model, dist):
        assert not model.training
        calls.append(1)
        return {"PQ": float(len(calls))}

    torch.manual_seed(0)
    tr = Trainer(toy_solver(max_iters=6, eval_period=2), ToyModel(), ToyCriterion(), ToyDataset(),
                 toy_collate, output_dir=tmp_path, evaluate_fn=evaluate, progress=False)
    out = tr.train()
    assert len(calls) == 3 and out["eval"] == {"PQ": 3.0}  # at 2, 4 and the end (6)
    assert tr.model.training
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val/PQ" in r]
    assert [r["iteration"] for r in rows] == [2, 4, 6]


def test_stream_sampler_shards_a_global_batch():
    one = StreamBatchSampler(10, 4, world_size=1, seed=3)
    two = [StreamBatchSampler(10, 2, world_size=2, rank=r, seed=3) for r in range(2)]
    it1 = iter(one)
    it2 = [iter(s) for s in two]
    for _ in range(6):  # crosses epoch boundaries (10 samples, 4 per step)
        global_batch = next(it1)
        assert next(it2[0]) + next(it2[1]) == global_batch
    # epoch 0 is a permutation of the dataset
    firsts = [idx for b in [next(iter(StreamBatchSampler(10, 10, seed=3)))] for idx, _ in b]
    assert sorted(firsts) == list(range(10))
    # resuming at a position continues the same stream
    ref = iter(StreamBatchSampler(10, 4, seed=3))
    for _ in range(2):
        next(ref)
    assert next(iter(StreamBatchSampler(10, 4, seed=3, start_position=8))) == next(ref)
    with pytest.raises(ValueError, match="multiple of the global batch"):
        StreamBatchSampler(10, 4, start_position=6)


def test_bad_batch_split_and_settings_raise(tmp_path):
    with pytest.raises(ValueError, match="batch_size=5"):
        _trainer(tmp_path, batch_size=5, grad_accum_steps=2)
    with pytest.raises(ValueError, match="solver.amp"):
        _trainer(tmp_path, amp="fp8")


def test_corrupt_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "model_0000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="model_0000001.pt"):
        ckpt.load_checkpoint(bad)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pt\n")
    with pytest.raises(FileNotFoundError, match="model_0000009.pt"):
        ckpt.find_last_checkpoint(tmp_path)


def test_bf16_autocast_keeps_losses_fp32(tmp_path):
    tr = _trainer(tmp_path, max_iters=2, amp="bf16")  # ToyCriterion asserts fp32 inputs
    out = tr.train()
    assert out["iteration"] == 2 and torch.isfinite(torch.tensor(out["last_losses"]["total"]))
