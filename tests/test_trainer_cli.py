"""``kmax train`` and ``torchrun -m kmax_deeplab.train`` on the real tiny model + synthetic data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kmax_deeplab.cli import build_parser
from kmax_deeplab.engine.logging import read_metrics

REPO = Path(__file__).resolve().parents[1]


def _options(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_kmax_train_and_module_entry_share_options():
    from kmax_deeplab import train as entry

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    kmax_train = sub.choices["train"]
    import argparse

    p = argparse.ArgumentParser()
    entry.add_train_arguments(p)
    assert _options(kmax_train) == _options(p)
    assert {"--config", "--resume", "--output-dir", "--data-root"} <= _options(p)
    help_text = kmax_train.format_help()
    assert "torchrun" in help_text and "key=value" in help_text


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from kmax_deeplab.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 6, 2, image_size=128, seed=0)
    return root


TINY = ["solver.batch_size=2", "solver.warmup_iters=1", "solver.log_period=1",
        "solver.checkpoint_period=2", "solver.device=cpu"]


@pytest.mark.slow
def test_kmax_train_runs_and_resumes(synthetic_root, tmp_path):
    from kmax_deeplab.cli import main

    out = tmp_path / "run"
    args = ["train", "--config", "synthetic/kmax_tiny", "--output-dir", str(out), "--data-root",
            str(synthetic_root), "--no-progress", *TINY]
    assert main(args + ["solver.max_iters=3"]) == 0
    assert (out / "last_checkpoint").read_text().strip() == "model_0000003.pt"
    assert (out / "model_final" / "model.safetensors").is_file()
    assert (out / "config.yaml").is_file()
    # the exported folder is what `kmax predict --model DIR` loads
    preds = tmp_path / "preds"
    image = next((synthetic_root / "val" / "images").iterdir())
    assert main(["predict", str(image), "--output", str(preds), "--model",
                 str(out / "model_final"), "--quiet", "--no-overlay"]) == 0
    assert (preds / f"{image.stem}.png").is_file() and (preds / "predictions.json").is_file()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows if "loss/total" in r] == [1, 2, 3]
    assert "val/PQ" in rows[-1]  # validated at the end of the run
    for name in ("loss_cls", "loss_dice", "loss_mask_id", "loss_insdis", "loss_sem"):
        assert f"loss/{name}" in rows[0]
    # --resume with a longer schedule is refused unless accepted (issue 14) ...
    assert main(args[:1] + ["--resume"] + args[1:] + ["solver.max_iters=4"]) == 2
    assert not (out / "model_0000004.pt").exists()
    # ... and with --resume-with-changes continues from step 3
    assert main(args[:1] + ["--resume", "--resume-with-changes", "solver.max_iters"] + args[1:]
                + ["solver.max_iters=4"]) == 0
    state = torch.load(out / "model_0000004.pt", weights_only=True)
    assert state["iteration"] == 4 and state["samples_seen"] == 8
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows if "loss/total" in r] == [1, 2, 3, 4]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_with_sync_bn(synthetic_root, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "kmax_deeplab.train", "--config", "synthetic/kmax_tiny", "--output-dir", str(out),
           "--data-root", str(synthetic_root), "--no-progress", *TINY, "solver.max_iters=2",
           "solver.eval_period=0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "model_0000002.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["samples_seen"] == 4  # global batch 2 = 1 image per rank
    # BN statistics were updated from the global batch (keys unchanged by SyncBN conversion)
    assert any(k.endswith("running_mean") for k in state["model"])
    assert (out / "model_final" / "model.safetensors").is_file()
