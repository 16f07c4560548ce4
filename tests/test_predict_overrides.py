"""``kmax predict`` overrides: the same ``key=value`` syntax as ``kmax train``, applied with
``--model`` too, and ``--opts`` no longer swallows the image paths after it (issue 10, item 8)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from kmax_deeplab import cli, load_config
from kmax_deeplab.checkpoints.native import save_native
from kmax_deeplab.commands.predict import split_overrides

ZERO = ["postprocess.thing_threshold=0.0", "postprocess.stuff_threshold=0.0",
        "postprocess.overlap_threshold=0.0", "postprocess.pixel_confidence_threshold=0.0"]


def test_split_overrides(tmp_path):
    img = tmp_path / "a=b.jpg"  # an existing file stays an input even if it looks like key=value
    img.write_bytes(b"x")
    inputs, overrides = split_overrides(["x.jpg", "model.num_queries=8", str(img)], [str(tmp_path), "solver.seed=1"])
    assert inputs == ["x.jpg", str(img), str(tmp_path)]
    assert overrides == ["model.num_queries=8", "solver.seed=1"]


def _segments(out):
    return [a["segments_info"] for a in json.loads((out / "predictions.json").read_text())["annotations"]]


@torch.no_grad()
def test_overrides_apply_with_model_and_after_images(tmp_path, capsys):
    from kmax_deeplab import build_model

    cfg = load_config("synthetic/kmax_tiny", ZERO)
    torch.manual_seed(0)
    save_native(tmp_path / "native", build_model(cfg).state_dict(), cfg)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / name)
    base = ["predict", "--output"]
    # thresholds 0 (the folder's config): the top query takes every image
    assert cli.main(base + [str(tmp_path / "o1"), "--model", str(tmp_path / "native"), "--quiet",
                            "--no-overlay", str(tmp_path / "a.png")]) == 0
    assert [len(s) for s in _segments(tmp_path / "o1")] == [1]
    # positional overrides after the image (kmax train syntax), applied to the --model config
    assert cli.main(base + [str(tmp_path / "o2"), "--model", str(tmp_path / "native"), "--quiet",
                            "--no-overlay", str(tmp_path / "a.png"), "postprocess.thing_threshold=2.0",
                            "postprocess.stuff_threshold=2.0"]) == 0
    assert _segments(tmp_path / "o2") == [[]]
    # --opts followed by an image: the image is still predicted
    assert cli.main(base + [str(tmp_path / "o3"), "--model", str(tmp_path / "native"), "--quiet",
                            "--no-overlay", str(tmp_path / "a.png"), "--opts", "postprocess.thing_threshold=2.0",
                            "postprocess.stuff_threshold=2.0", str(tmp_path / "b.png")]) == 0
    assert _segments(tmp_path / "o3") == [[], []]
    assert "ignored" not in capsys.readouterr().err
