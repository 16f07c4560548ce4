"""Resume that means it (issue 14, item 5), on the toy trainer of ``_trainer_toys``.

SIGKILL of a real training process (at a random step, mid-write of a checkpoint, after the
checkpoint's rename but before ``last_checkpoint`` moves) followed by a resume ends at
bit-identical weights to an uninterrupted run; a corrupt newest checkpoint falls back to the
previous one; a changed config is refused unless accepted; stale ``.tmp`` files are removed,
``metrics.jsonl`` has no duplicate rows, ``solver.keep_last_n`` prunes, files follow the umask.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from kmax_deeplab.engine.resume import check_config_changes, truncate_metrics
from kmax_deeplab.engine.trainer import Trainer
from kmax_deeplab.errors import ConfigError, InputError

from _trainer_toys import ToyCriterion, ToyDataset, ToyModel, toy_collate, toy_solver

REPO = Path(__file__).resolve().parents[1]
SOLVER = dict(max_iters=8, checkpoint_period=2, log_period=1)


def _trainer(out: Path, config: dict | None = None, **kw) -> Trainer:
    torch.manual_seed(0)
    return Trainer(toy_solver(**{**SOLVER, **kw}), ToyModel(drop=0.2), ToyCriterion(), ToyDataset(),
                   toy_collate, output_dir=out, progress=False, config_dict=config)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final weights of an uninterrupted 8-step run."""
    tr = _trainer(tmp_path_factory.mktemp("ref"))
    tr.train()
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


def _assert_same(trainer: Trainer, ref: dict) -> None:
    got = trainer.model.state_dict()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


_CHILD = """
import os, signal, sys
sys.modules["torch.utils.tensorboard"] = None  # metrics.jsonl only: skips a ~10 s TF import
import torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from _trainer_toys import ToyCriterion, ToyDataset, ToyModel, toy_collate, toy_solver
from kmax_deeplab.engine import checkpointer, trainer as T
mode, k = {mode!r}, {k}
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if mode == "step":  # SIGKILL at the start of optimizer step k
    real_step = T.Trainer.run_step
    def run_step(self, batches):
        if self.iteration == k:
            die()
        return real_step(self, batches)
    T.Trainer.run_step = run_step
elif mode == "mid_write":  # half of checkpoint k's temporary file is on disk
    real_save = torch.save
    def save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        if obj.get("iteration") == k:
            Path(f).write_bytes(Path(f).read_bytes()[:200])
            die()
    torch.save = save
elif mode == "after_rename":  # checkpoint k renamed into place, last_checkpoint not updated
    real_write = checkpointer.atomic_write_text
    def write(path, text):
        if Path(path).name == "last_checkpoint" and text.strip() == checkpointer.checkpoint_name(k):
            die()
        return real_write(path, text)
    checkpointer.atomic_write_text = write
torch.manual_seed(0)
tr = T.Trainer(toy_solver(max_iters=8, checkpoint_period=2, log_period=1), ToyModel(drop=0.2),
               ToyCriterion(), ToyDataset(), toy_collate, output_dir={out!r}, progress=False)
tr.train()
"""


@pytest.mark.parametrize("mode,k", [("step", random.Random(14).randint(3, 7)), ("mid_write", 4),
                                    ("after_rename", 6)])
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, mode, k):
    out = tmp_path / "run"
    code = _CHILD.format(tests=str(REPO / "tests"), mode=mode, k=k, out=str(out))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    if mode == "mid_write":
        assert list(out.glob(".model_0000004.pt.*.tmp"))  # the interrupted write's leftover
    resumed = _trainer(out)
    expected_start = {"step": (k // 2) * 2, "mid_write": 2, "after_rename": 6}[mode]
    assert resumed.resume_if_possible() == (expected_start > 0)
    assert resumed.iteration == expected_start
    from kmax_deeplab.engine.resume import clean_run_folder

    clean_run_folder(out, resumed.iteration)  # what `kmax train --resume` does
    assert not list(out.glob(".*.tmp"))
    resumed.train()
    _assert_same(resumed, reference)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    its = [r["iteration"] for r in rows if "loss/total" in r]
    assert its == list(range(1, 9))  # no duplicate rows for re-run steps


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, reference):
    out = tmp_path / "run"
    _trainer(out).train(max_iters=6)
    newest = out / "model_0000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumed = _trainer(out)
    with pytest.warns(RuntimeWarning, match=r"model_0000006\.pt: corrupt or unreadable"):
        assert resumed.resume_if_possible()
    assert resumed.iteration == 4
    resumed.train()
    _assert_same(resumed, reference)


def test_no_intact_checkpoint_is_one_error(tmp_path):
    out = tmp_path / "run"
    _trainer(out).train(max_iters=2)
    (out / "model_0000002.pt").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="no intact checkpoint.*model_0000002.pt"):
            _trainer(out).resume_if_possible()


def test_changed_config_is_refused_unless_accepted(tmp_path, reference):
    out = tmp_path / "run"
    stored = {"solver": {"batch_size": 4, "max_iters": 8, "log_period": 1}, "model": {"w": 1}}
    _trainer(out, stored).train(max_iters=4)
    changed = {"solver": {"batch_size": 8, "max_iters": 8, "log_period": 5}, "model": {"w": 1}}
    with pytest.raises(ConfigError, match=r"solver\.batch_size: 4 -> 8") as e:
        _trainer(out, changed).resume_if_possible()
    assert "log_period" not in str(e.value)  # logging changes are harmless
    assert "--resume-with-changes solver.batch_size" in e.value.hint
    tr = _trainer(out, changed)
    assert tr.resume_if_possible(accept_changes=["solver.batch_size"])
    # a whole section can be accepted too
    assert check_config_changes(stored, changed, ["solver"]) == ["solver.batch_size", "solver.log_period"]


def test_accepted_schedule_change_is_used(tmp_path):
    out = tmp_path / "run"
    stored = {"solver": {"max_iters": 8}}
    _trainer(out, stored).train(max_iters=4)
    tr = _trainer(out, {"solver": {"max_iters": 16}}, max_iters=16)
    assert tr.resume_if_possible(accept_changes=["solver.max_iters"])
    assert tr.scheduler.max_iters == 16
    base = tr.optimizer.param_groups[0]["initial_lr"]
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(base * (1 - 4 / 16) ** 0.9)


def test_metrics_truncation_drops_later_and_torn_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "x": i}) + "\n" for i in range(1, 7))
                    + '{"iteration": 7, "x"')
    assert truncate_metrics(path, 4) == 3
    assert [json.loads(x)["iteration"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_keep_last_n_prunes_old_checkpoints(tmp_path):
    out = tmp_path / "run"
    _trainer(out, keep_last_n=2).train()
    assert sorted(p.name for p in out.glob("model_*.pt")) == ["model_0000006.pt", "model_0000008.pt"]
    assert (out / "last_checkpoint").read_text().strip() == "model_0000008.pt"


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "run"
        _trainer(out).train(max_iters=2)
        from kmax_deeplab.fileio import atomic_write_text

        atomic_write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    for p in (out / "model_0000002.pt", out / "last_checkpoint", tmp_path / "t.txt"):
        assert p.stat().st_mode & 0o777 == 0o640, p


def test_fresh_run_into_a_used_run_folder_is_refused(tmp_path):
    from kmax_deeplab.engine.resume import check_fresh_run_folder

    check_fresh_run_folder(tmp_path / "new")  # missing: fine
    out = tmp_path / "run"
    _trainer(out).train(max_iters=2)
    with pytest.raises(InputError, match=r"already holds a training run \(model_0000002.pt\)") as e:
        check_fresh_run_folder(out)
    assert "--resume" in e.value.hint
