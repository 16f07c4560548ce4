"""The CLI error policy (issue 14, item 1): every expected failure exits non-zero with ONE line
on stderr that names the file or option and the problem (plus a hint where one exists); a
traceback only with ``--debug`` or for a real bug. Config validation covers ranges,
enumerations and devices, and a run folder is created only after the config validates.

Almost every case is an in-process ``kmax_deeplab.cli.main([...])`` call that fails before
any model is built; three subprocess checks confirm what a user's terminal shows.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kmax_deeplab import cli
from kmax_deeplab.errors import EXIT_BUG, EXIT_FAILURE, EXIT_USAGE, format_error

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config", "synthetic/kmax_tiny", "--quiet", "--no-overlay"]
NO_CUDA = not torch.cuda.is_available()


def one_line(capsys) -> str:
    """The single non-empty stderr line; fails on tracebacks or several lines."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "a.png"
    Image.fromarray(np.full((9, 11, 3), 90, np.uint8)).save(path)
    return path


def _predict(image: Path, tmp_path: Path, *extra: str) -> int:
    return cli.main(["predict", str(image), "-o", str(tmp_path / "out"), *TINY, *extra])


# --------------------------------------------------------------------------- config values
@pytest.mark.parametrize("override,needle", [
    ("postprocess.thing_threshold=nan", "postprocess.thing_threshold=nan: must be a finite number"),
    ("postprocess.stuff_threshold=1.5", "postprocess.stuff_threshold=1.5: must be in [0.0, 1.0]"),
    ("postprocess.overlap_threshold=-0.1", "postprocess.overlap_threshold=-0.1: must be in"),
    ("postprocess.variant=nonsense", "postprocess.variant='nonsense': unknown value; expected one "
                                     "of auto, bytedance, deeplab2"),
    ("postprocess.thing_area_limit=-1", "postprocess.thing_area_limit=-1: must be integer(s) >= 0"),
    ("solver.amp=fp8", "solver.amp='fp8': unknown value"),
    ("solver.device=tpu", "solver.device='tpu': unknown device"),
    ("data.dataset=imagenet", "data.dataset='imagenet': unknown dataset"),
    ("loss.focal_alpha=inf", "loss.focal_alpha=inf: must be a finite number"),
    ("model.drop_path=1.0", "model.drop_path=1.0: must be in [0.0, 1.0)"),
])
def test_bad_config_values_are_one_line(image, tmp_path, capsys, override, needle):
    assert _predict(image, tmp_path, "--opts", override) == EXIT_USAGE
    line = one_line(capsys)
    assert line.startswith("kmax predict: ") and needle in line
    assert not (tmp_path / "out").exists()


def test_unknown_override_key(image, tmp_path, capsys):
    assert _predict(image, tmp_path, "--opts", "postprocess.thing_treshold=0.5") == EXIT_FAILURE
    assert "unknown key 'postprocess.thing_treshold'" in one_line(capsys)


def test_malformed_yaml_names_file_and_line(image, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: synthetic/kmax_tiny\nsolver:\n  batch_size: [1, 2\n")
    code = cli.main(["predict", str(image), "-o", str(tmp_path / "out"), "--config", str(bad),
                     "--quiet"])
    line = one_line(capsys)
    assert code == EXIT_FAILURE
    assert f"{bad}:" in line and "malformed YAML" in line and "hint:" in line


def test_yaml_that_is_not_a_mapping(image, tmp_path, capsys):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    assert cli.main(["predict", str(image), "-o", str(tmp_path / "o"), "--config", str(bad)]) == 1
    assert f"{bad}: the config must be a mapping" in one_line(capsys)


def test_unknown_key_in_yaml_file(image, tmp_path, capsys):
    bad = tmp_path / "k.yaml"
    bad.write_text("base: synthetic/kmax_tiny\nsolver:\n  bach_size: 2\n")
    assert cli.main(["predict", str(image), "-o", str(tmp_path / "o"), "--config", str(bad)]) == 1
    line = one_line(capsys)
    assert str(bad) in line and "bach_size" in line


# --------------------------------------------------------------------------- devices
@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_predict_on_missing_cuda(image, tmp_path, capsys):
    assert _predict(image, tmp_path, "--device", "cuda") == EXIT_USAGE
    line = one_line(capsys)
    assert "--device=cuda: CUDA is not available on this machine" in line and "kmax info" in line


def test_predict_on_unknown_or_missing_devices(image, tmp_path, capsys):
    assert _predict(image, tmp_path, "--device", "gpu0") == EXIT_USAGE
    assert "--device='gpu0': unknown device" in one_line(capsys)
    mps = getattr(torch.backends, "mps", None)
    if not (mps and mps.is_available()):
        assert _predict(image, tmp_path, "--device", "mps") == EXIT_USAGE
        assert "--device=mps: Apple MPS is not available" in one_line(capsys)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_train_on_missing_cuda_creates_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.main(["train", "--config", "synthetic/kmax_tiny", "--output-dir", str(run),
                     "--data-root", str(tmp_path), "solver.device=cuda"])
    assert code == EXIT_USAGE
    assert "solver.device=cuda: CUDA is not available" in one_line(capsys)
    assert not run.exists()


# --------------------------------------------------------------------------- kmax train
def test_train_config_errors_create_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--config", "synthetic/kmax_tiny", "--output-dir", str(run)]
    assert cli.main(base + ["solver.batch_size=0"]) == EXIT_USAGE
    assert "solver.batch_size=0: must be integer(s) >= 1" in one_line(capsys)
    assert cli.main(base + ["solver.max_iters"]) == EXIT_FAILURE
    assert "override 'solver.max_iters' is not of the form key=value" in one_line(capsys)
    assert cli.main(["train", "--config", "nonexistent/preset", "--output-dir", str(run)]) == 1
    assert "config 'nonexistent/preset' is neither a preset" in one_line(capsys)
    assert cli.main(base + ["--resume-with-changes", "solver.max_iters"]) == EXIT_USAGE
    assert "--resume-with-changes: only valid with --resume" in one_line(capsys)
    assert not run.exists()


def test_train_missing_dataset_is_one_line_and_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.main(["train", "--config", "synthetic/kmax_tiny", "--output-dir", str(run),
                     "--data-root", str(tmp_path / "nowhere"), "--no-progress",
                     "model.image_size=[33,33]", "data.crop_size=[33,33]"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE and "Traceback" not in err
    assert str(tmp_path / "nowhere") in err.strip().splitlines()[-1]
    assert not run.exists()


# --------------------------------------------------------------------------- predict inputs
def test_output_path_is_a_file(image, tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert _predict(image, tmp_path) == EXIT_FAILURE
    assert "out: the output path exists and is not a folder" in one_line(capsys)


@pytest.mark.parametrize("option,value", [("--max-pixels", "0"), ("--batch-size", "0")])
def test_bad_predict_numbers(image, tmp_path, capsys, option, value):
    assert _predict(image, tmp_path, option, value) == EXIT_USAGE
    assert f"{option}={value}: must be >= 1" in one_line(capsys)


def test_read_only_output_folder(image, tmp_path, capsys, monkeypatch):
    from kmax_deeplab.engine import predict_journal

    def refuse(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(predict_journal, "atomic_write_text", refuse)
    assert _predict(image, tmp_path, "--opts", "model.image_size=[33,33]") == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("kmax predict: error: ") and "Read-only file system" in line
    assert "predictions.journal.jsonl" in line and "hint: check the permissions" in line


def test_zero_byte_and_missing_weights(image, tmp_path, capsys):
    empty = tmp_path / "w.safetensors"
    empty.write_bytes(b"")
    assert _predict(image, tmp_path, "--weights", str(empty)) == EXIT_FAILURE
    line = one_line(capsys)
    assert f"{empty}: cannot read safetensors weights" in line
    folder = tmp_path / "ckpt"
    folder.mkdir()
    assert _predict(image, tmp_path, "--weights", str(folder)) == EXIT_FAILURE
    assert "not a kmax-deeplab checkpoint folder (model.safetensors is missing)" in one_line(capsys)


def test_offline_zoo_download(image, tmp_path, capsys, monkeypatch):
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("KMAX_CACHE", str(tmp_path / "cache"))
    code = cli.main(["predict", str(image), "-o", str(tmp_path / "out"), "--model", "kmax_r50_coco",
                     "--quiet"])
    line = one_line(capsys)
    assert code == EXIT_FAILURE
    assert "cannot download kmax_r50_coco" in line and "kmax convert" in line


def test_predictor_rejects_empty_and_bad_arrays():
    from kmax_deeplab.engine.predictor import load_image

    with pytest.raises(ValueError, match=r"empty image array of shape \(0, 0, 3\)"):
        load_image(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN or inf"):
        load_image(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="must be"):
        load_image(np.zeros((4, 4, 5), np.uint8))


# --------------------------------------------------------------------------- convert
def test_convert_zero_byte_pth(tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"")
    code = cli.main(["convert", "--from", "detectron2", str(tmp_path / "w.pth"), str(tmp_path / "o"),
                     "--config", "synthetic/kmax_tiny"])
    line = one_line(capsys)
    assert code == EXIT_FAILURE and "w.pth: not a valid PyTorch weights file" in line


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo PWNED",))


def test_convert_refuses_code_pickles_without_dangerous_advice(tmp_path, capsys):
    torch.save({"model": _Evil()}, tmp_path / "evil.pth")
    code = cli.main(["convert", "--from", "detectron2", str(tmp_path / "evil.pth"),
                     str(tmp_path / "o"), "--config", "synthetic/kmax_tiny"])
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert code == EXIT_FAILURE and len(lines) == 1 and "Traceback" not in out.err
    assert "evil.pth: refused by torch.load(weights_only=True)" in lines[0]
    assert "False" not in lines[0] and "PWNED" not in out.out + out.err


def test_convert_into_existing_folder(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "w.pth")
    code = cli.main(["convert", "--from", "detectron2", str(tmp_path / "w.pth"), str(tmp_path / "o"),
                     "--config", "synthetic/kmax_tiny", "--non-strict"])
    line = one_line(capsys)
    assert code == EXIT_FAILURE and f"{tmp_path / 'o'}: already exists" in line


# --------------------------------------------------------------------------- evaluate
def _eval_files(tmp_path: Path, pred_segments: list, gt_annotations: list | None = None):
    from kmax_deeplab.panoptic_ids import id_to_rgb

    (tmp_path / "gt").mkdir(exist_ok=True)
    (tmp_path / "pred").mkdir(exist_ok=True)
    ids = np.zeros((6, 8), np.int64)
    ids[:3] = 5
    Image.fromarray(id_to_rgb(ids)).save(tmp_path / "gt" / "1.png")
    Image.fromarray(id_to_rgb(ids)).save(tmp_path / "pred" / "1.png")
    cats = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]
    gt_anns = gt_annotations or [{"image_id": 1, "file_name": "1.png",
                                  "segments_info": [{"id": 5, "category_id": 1, "iscrowd": 0}]}]
    (tmp_path / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": cats}))
    (tmp_path / "pred.json").write_text(json.dumps(
        {"annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": pred_segments}]}))
    return ["evaluate", "--gt-json", str(tmp_path / "gt.json"), "--gt-folder", str(tmp_path / "gt"),
            "--pred-json", str(tmp_path / "pred.json"), "--pred-folder", str(tmp_path / "pred"),
            "--workers", "0", "--no-progress", "--ap"]


@pytest.mark.parametrize("score,needle", [
    (float("nan"), "image 1: predicted segment 5 has a non-finite score nan"),
    (float("inf"), "image 1: predicted segment 5 has a non-finite score inf"),
    ("0.9", "image 1: predicted segment 5 has score '0.9' (str); expected a finite number"),
    ([0.9], "image 1: predicted segment 5 has score [0.9] (list)"),
])
def test_evaluate_refuses_bad_scores(tmp_path, capsys, score, needle):
    argv = _eval_files(tmp_path, [{"id": 5, "category_id": 1, "score": score}])
    assert cli.main(argv) == EXIT_FAILURE
    assert needle in one_line(capsys)


def test_evaluate_duplicate_gt_image_ids(tmp_path, capsys):
    dup = [{"image_id": 1, "file_name": "1.png", "segments_info": [{"id": 5, "category_id": 1}]},
           {"image_id": 1, "file_name": "2.png", "segments_info": []}]
    argv = _eval_files(tmp_path, [{"id": 5, "category_id": 1, "score": 0.5}], dup)
    assert cli.main(argv) == EXIT_FAILURE
    line = one_line(capsys)
    assert "two annotations with image_id 1" in line and "2.png" in line


def test_evaluate_prediction_id_zero(tmp_path, capsys):
    segs = [{"id": 5, "category_id": 1, "score": 0.5}, {"id": 0, "category_id": 2, "score": 0.5}]
    argv = _eval_files(tmp_path, segs)
    with pytest.warns(UserWarning, match="list segment id 0"):
        assert cli.main(argv) == 0  # panopticapi's behaviour: scored as a segment
    capsys.readouterr()
    assert cli.main(argv + ["--strict-void"]) == EXIT_FAILURE
    assert "image 1: predicted segments_info lists id 0" in one_line(capsys)


def test_evaluate_json_not_utf8(tmp_path, capsys):
    argv = _eval_files(tmp_path, [])
    (tmp_path / "pred.json").write_bytes('{"annotations": [], "x": "é"}'.encode("latin-1"))
    assert cli.main(argv) == EXIT_FAILURE
    line = one_line(capsys)
    assert "pred.json: not UTF-8 text" in line


# --------------------------------------------------------------------------- the policy itself
def test_a_real_bug_keeps_its_traceback(image, tmp_path, capsys, monkeypatch):
    from kmax_deeplab.commands import predict

    def broken(inputs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(predict, "collect_images", broken)
    assert _predict(image, tmp_path) == EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "this is a bug in kmax-deeplab" in err


def test_format_error_hints_for_full_disk():
    line = format_error(OSError(errno.ENOSPC, "No space left on device", "/x/p.png"), "kmax predict")
    assert line == ("kmax predict: error: /x/p.png: No space left on device "
                    "(hint: free some disk space or write to another folder)")


def _run(*argv: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "kmax_deeplab.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=120)


def test_subprocess_no_traceback_and_debug_shows_it(tmp_path):
    argv = ["predict", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), *TINY, "--opts",
            "postprocess.variant=nonsense"]
    (tmp_path / "x.png").write_bytes(b"")
    plain = _run(*argv)
    assert plain.returncode == EXIT_USAGE
    assert plain.stderr.strip().count("\n") == 0 and "Traceback" not in plain.stderr
    assert "postprocess.variant='nonsense'" in plain.stderr
    debug = _run(*argv[:1], "--debug", *argv[1:])
    assert debug.returncode == EXIT_USAGE and "Traceback" in debug.stderr
    assert "postprocess.variant='nonsense'" in debug.stderr.strip().splitlines()[-1]


def test_subprocess_train_module_entry(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "kmax_deeplab.train", "--config",
                           "synthetic/kmax_tiny", "--output-dir", str(tmp_path / "run"),
                           "postprocess.thing_threshold=2"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("kmax train: error: postprocess.thing_threshold=2.0: must be "
                                   "in [0.0, 1.0]")
    assert not (tmp_path / "run").exists()
