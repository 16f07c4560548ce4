"""ONNX and torch.export of a random-weight tiny kMaX: outputs equal PyTorch's, same partition.

Oracle: the PyTorch model itself on the same real photos (fp32; mask and class logits within
1e-4, identical panoptic maps through the shared Predictor post-processing), at batch 1 and 2
(dynamic batch).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import kmax_deeplab
from kmax_deeplab import cli
from kmax_deeplab.config import apply_overrides, get_preset
from kmax_deeplab.engine.export import export_onnx, load_exported, read_export_config
from kmax_deeplab.engine.predictor import Predictor, load_image
from kmax_test_utils import randomise_batch_norms

pytest.importorskip("onnxruntime", reason="onnxruntime missing: pip install 'kmax-deeplab[export]'")
pytest.importorskip("onnxscript", reason="onnxscript missing: pip install 'kmax-deeplab[export]'")

PHOTOS = sorted((Path(kmax_deeplab.__file__).parent / "assets" / "coco_sample").glob("*.jpg"))
# fp32: |exported - pytorch| <= 1e-4 + 1e-4 |pytorch| (the randomised BNs give logits ~10)
ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def torch_predictor():
    cfg = apply_overrides(get_preset("synthetic/kmax_tiny"), [
        "model.image_size=[65,65]", "postprocess.thing_threshold=0.0",
        "postprocess.stuff_threshold=0.0", "postprocess.pixel_confidence_threshold=0.2",
        "postprocess.overlap_threshold=0.3"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        predictor = Predictor.from_config(cfg, channels_last=False)
    randomise_batch_norms(predictor.model, 0)
    return predictor


@pytest.fixture(scope="module")
def exports(torch_predictor, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    # The CLI path, `kmax export --format torch-export --model DIR -o`, on a native folder of
    # the same weights; the ONNX graph is translated from that program (tracing is the slow
    # part of both exports, so it is done once).
    from kmax_deeplab.checkpoints.native import save_native

    folder = save_native(out / "native", torch_predictor.model.state_dict(), torch_predictor.cfg)
    pt2 = out / "tiny.pt2"
    assert cli.main(["export", "--format", "torch-export", "--model", str(folder), "-o", str(pt2),
                     "--max-batch", "4"]) == 0
    onnx_file = export_onnx(None, torch_predictor.cfg, out / "tiny.onnx",
                            program=torch.export.load(str(pt2)))
    return {"torch-export": pt2, "onnx": onnx_file}


def compare(reference, exported, images):
    raw_ref = reference.forward_batch(images)
    raw_exp = exported.forward_batch(images)
    for key in ("pred_logits", "pred_masks"):
        assert raw_exp[key].shape == raw_ref[key].shape
        torch.testing.assert_close(raw_exp[key], raw_ref[key], atol=ATOL, rtol=RTOL)
    sizes = [img.shape[:2] for img in images]
    for r, e in zip(reference.postprocess(raw_ref, sizes), exported.postprocess(raw_exp, sizes)):
        assert len(r["segments_info"]) >= 2
        # The same segments (ids, classes, scores) ...
        assert [(s["id"], s["category_id"], s["isthing"]) for s in e["segments_info"]] == \
            [(s["id"], s["category_id"], s["isthing"]) for s in r["segments_info"]]
        for a, b in zip(e["segments_info"], r["segments_info"]):
            assert abs(a["score"] - b["score"]) < 1e-5
        # ... over the same pixels, except where a 1e-4 logit difference flips a pixel whose
        # mask probability sits on the 0.2 threshold (seen: 4 of 273k pixels with ONNX).
        differ = int((e["panoptic"] != r["panoptic"]).sum())
        assert differ <= 1e-4 * r["panoptic"].size, f"{differ} pixels differ"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_export_matches_pytorch(torch_predictor, exports, fmt):
    exported = load_exported(exports[fmt])
    assert exported.model.backend == ("onnxruntime" if fmt == "onnx" else "torch-export")
    assert exported.canvas == torch_predictor.canvas
    assert exported.cfg.postprocess == torch_predictor.cfg.postprocess  # config travelled along
    images = [load_image(p) for p in PHOTOS]
    compare(torch_predictor, exported, images[:1])  # batch 1
    compare(torch_predictor, exported, images)      # batch 2: the batch dimension is dynamic


@pytest.mark.slow
def test_onnx_graph_opset_and_dynamic_batch(exports):
    import onnx

    model = onnx.load(str(exports["onnx"]))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # symbolic batch
    assert [o.name for o in model.graph.output] == ["pred_logits", "pred_masks"]


def test_export_errors(tmp_path, capsys):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(FileNotFoundError, match="no such exported model"):
        read_export_config(tmp_path / "missing.onnx")
    with pytest.raises(Exception):
        read_export_config(bad)
    assert cli.main(["export", "--format", "onnx", "-o", str(tmp_path / "y.onnx")]) == 2
    assert "--model" in capsys.readouterr().err
    assert cli.main(["export", "--format", "onnx", "--model", str(tmp_path / "nope"),
                     "-o", str(tmp_path / "y.onnx")]) == 2
