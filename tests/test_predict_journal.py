"""``kmax predict`` never loses finished work (issue 14, item 2).

A folder of 30 tiny images with a decompression bomb (a PNG header claiming 20000x20000
pixels), a truncated PNG and a read-only neighbour in the middle: every good image is
predicted and ``predictions.json`` lists exactly them; a SIGKILL in the middle of the run
followed by ``--resume`` completes the same set; a used output folder is refused or cleaned.
The model is the tiny synthetic preset at a 33x33 canvas with random weights.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab import cli
from kmax_deeplab.engine.predict_journal import JOURNAL_NAME

REPO = Path(__file__).resolve().parents[1]
OPTS = ["--config", "synthetic/kmax_tiny", "--quiet", "--no-overlay", "--opts",
        "model.image_size=[33,33]", "data.crop_size=[33,33]"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A 100-byte PNG whose header claims ``width x height`` 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def make_folder(folder: Path, n: int = 30) -> list[str]:
    """``n`` files ``img_00..``: #10 a bomb, #15 truncated, #20 read-only; returns the good stems."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = []
    for i in range(n):
        path = folder / f"img_{i:02d}.png"
        if i == 10:
            bomb_png(path)
            continue
        Image.fromarray(rng.integers(0, 256, (24 + i % 5, 30, 3), dtype=np.uint8)).save(path)
        if i == 15:
            path.write_bytes(path.read_bytes()[:60])  # truncated inside the pixel data
            continue
        if i == 20:
            path.chmod(0o444)  # read-only input: read, never opened for writing
        good.append(path.stem)
    return good


def _listed(out: Path) -> list[str]:
    data = json.loads((out / "predictions.json").read_text())
    assert [a["file_name"][:-4] for a in data["annotations"]] == [im["file_name"][:-4]
                                                                    for im in data["images"]]
    for ann in data["annotations"]:
        assert (out / ann["file_name"]).is_file()
    return sorted(a["file_name"][:-4] for a in data["annotations"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pj")
    good = make_folder(root / "in")
    return root / "in", good


@pytest.mark.slow
def test_bad_images_are_skipped_and_the_rest_listed(folder, tmp_path, capsys):
    inputs, good = folder
    out = tmp_path / "out"
    assert cli.main(["predict", str(inputs), "-o", str(out), *OPTS]) == 0
    err = capsys.readouterr().err
    assert "img_10.png" in err and "20000x20000" in err and "--max-pixels" in err
    assert "img_15.png" in err and "Traceback" not in err
    assert _listed(out) == good and len(good) == 28
    journal = [json.loads(x) for x in (out / JOURNAL_NAME).read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in journal if "error" in r) == ["img_10.png",
                                                                              "img_15.png"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_completes_the_same_set(folder, tmp_path):
    inputs, good = folder
    out = tmp_path / "out"
    # The child kills itself with SIGKILL right after the 12th image's PNG is written and
    # before its journal line: the worst moment (files on disk, not yet committed).
    script = (
        "import os, signal, sys\n"
        "from kmax_deeplab.engine import writers\n"
        "real = writers.PredictionWriter.add\n"
        "n = [0]\n"
        "def add(self, *a, **k):\n"
        "    stem = real(self, *a, **k)\n"
        "    n[0] += 1\n"
        "    if n[0] == 12:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return stem\n"
        "writers.PredictionWriter.add = add\n"
        "from kmax_deeplab import cli\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, "predict", str(inputs), "-o", str(out),
                           *OPTS], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    done_before = [json.loads(x) for x in lines[1:] if "stem" in json.loads(x)]
    assert len(done_before) == 11  # committed before the kill; the 12th PNG is uncommitted
    # A plain rerun is refused: the folder holds a run.
    assert cli.main(["predict", str(inputs), "-o", str(out), *OPTS]) == 1
    assert cli.main(["predict", str(inputs), "-o", str(out), "--resume", *OPTS]) == 0
    assert _listed(out) == good
    # the resumed run appended; no finished image was predicted twice
    records = [json.loads(x) for x in (out / JOURNAL_NAME).read_text().splitlines()[1:]]
    stems = [r["stem"] for r in records if "stem" in r]
    assert sorted(stems) == good and len(stems) == len(set(stems))
    assert not list(out.glob(".*.tmp"))


def test_torn_journal_line_is_dropped_on_resume(tmp_path):
    from kmax_deeplab.engine.predict_journal import open_journal

    cats = [{"id": 1, "name": "a", "isthing": 1, "color": [1, 2, 3]}]
    j = open_journal(tmp_path / "o", cats)
    j.commit(tmp_path / "a.png", "a", {"id": "a"}, {"image_id": "a", "file_name": "a.png",
                                                     "segments_info": []})
    j.close()
    with open(tmp_path / "o" / JOURNAL_NAME, "a") as f:
        f.write('{"source": "/x/b.png", "stem": "b", "ima')  # killed mid-append
    (tmp_path / "o" / ".a.png.abc123.tmp").write_bytes(b"half")
    j = open_journal(tmp_path / "o", cats, resume=True)
    assert list(j.done) == [str((tmp_path / "a.png").absolute())]
    assert not (tmp_path / "o" / ".a.png.abc123.tmp").exists()
    j.close()
    lines = (tmp_path / "o" / JOURNAL_NAME).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x) for x in lines)
    other = [{"id": 2, "name": "b", "isthing": 0, "color": [1, 2, 3]}]
    with pytest.raises(ValueError, match="other categories"):
        open_journal(tmp_path / "o", other, resume=True)


def test_used_output_folder_is_refused_before_the_model_is_built(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = cli.main(["predict", str(tmp_path / "a.png"), "-o", str(out), *OPTS])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{out}: the output folder is not empty" in err and "--overwrite" in err
    assert "RANDOM" not in err  # refused before building the model
    assert err.count("\n") == 1


@pytest.mark.slow
def test_overwrite_removes_the_previous_run_only(tmp_path, capsys):
    for name in ("a", "b"):
        Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    assert cli.main(["predict", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out),
                     *OPTS]) == 0
    (out / "notes.txt").write_text("mine")
    (out / ".b.png.zzz.tmp").write_bytes(b"stale")
    assert cli.main(["predict", str(tmp_path / "a.png"), "-o", str(out), "--overwrite", *OPTS]) == 0
    assert _listed(out) == ["a"]
    assert not (out / "b.png").exists() and not (out / ".b.png.zzz.tmp").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert cli.main(["predict", str(tmp_path / "a.png"), "-o", str(out), "--overwrite",
                     "--resume", *OPTS]) == 1
    assert "choose one" in capsys.readouterr().err


@pytest.mark.slow
def test_max_pixels_option_and_error_keeps_finished_work(tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, size in enumerate((8, 40, 8, 8)):
        Image.fromarray(np.full((size, size, 3), 30 * i, np.uint8)).save(inputs / f"p{i}.png")
    out = tmp_path / "out"
    assert cli.main(["predict", str(inputs), "-o", str(out), "--max-pixels", "100", *OPTS]) == 0
    err = capsys.readouterr().err
    assert "p1.png: 40x40 = 1600 pixels is more than the limit of 100" in err
    assert _listed(out) == ["p0", "p2", "p3"]
    # A failing disk after two images: the error is one line and predictions.json lists them.
    from kmax_deeplab.engine import writers

    real = writers.PredictionWriter.add
    calls = []

    def add(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(out / "p2.png"))
        return real(self, *a, **k)

    monkeypatch.setattr(writers.PredictionWriter, "add", add)
    out2 = tmp_path / "out2"
    assert cli.main(["predict", str(inputs), "-o", str(out2), *OPTS]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("kmax predict: error: ") and "No space left on device" in err
    assert "free some disk space" in err
    assert _listed(out2) == ["p0", "p1"]


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_images(tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(inputs / f"q{i}.png")
    from kmax_deeplab.engine import writers

    real = writers.PredictionWriter.add
    calls = []

    def add(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(writers.PredictionWriter, "add", add)
    out = tmp_path / "out"
    assert cli.main(["predict", str(inputs), "-o", str(out), *OPTS]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _listed(out) == ["q0", "q1"]
    monkeypatch.undo()
    assert cli.main(["predict", str(inputs), "-o", str(out), "--resume", *OPTS]) == 0
    assert _listed(out) == ["q0", "q1", "q2", "q3"]
