"""Zoo download path against a local HTTP server, tar safety, ``kmax convert``, deeplab2 class orders."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest
import torch

from _ckpt_layouts import bd_name_to_ours, our_shapes, random_bd_state, random_tf_variables
from kmax_deeplab.checkpoints import zoo
from kmax_deeplab.checkpoints.deeplab2_tf import convert_deeplab2, tf_class_order
from kmax_deeplab.checkpoints.native import load_native
from kmax_deeplab.checkpoints.table import CheckpointMismatchError
from kmax_deeplab.modeling import families

NAME = "kmax_r50_coco_bd"


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def shapes_module(shapes):
    """An ``nn.Module`` whose state dict has exactly ``shapes`` (dotted name -> shape)."""
    root = torch.nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_buffer(leaf, torch.zeros(shape))
    return root


@pytest.fixture()
def small_bd(checkpoint_layouts, monkeypatch):
    """A small BD state dict; kMaX's family row builds a target with exactly its names/shapes."""
    bd = {k: v for k, v in random_bd_state(checkpoint_layouts, "r50").items() if v.numel() < 5000}
    shapes = {bd_name_to_ours(k): tuple(v.shape) for k, v in bd.items()}
    row = dataclasses.replace(families.FAMILIES["kmax"], build_model=lambda cfg: shapes_module(shapes))
    monkeypatch.setitem(families.FAMILIES, "kmax", row)
    return bd


def test_zoo_download_convert_cache(server, small_bd, tmp_path, monkeypatch):
    root, base = server
    torch.save({"model": small_bd}, root / "kmax_r50.pth")
    digest = hashlib.sha256((root / "kmax_r50.pth").read_bytes()).hexdigest()
    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(zoo.ZOO[NAME], sha256=digest))
    out = zoo.get_zoo_checkpoint(NAME, cache_dir=tmp_path / "cache", url=f"{base}/kmax_r50.pth", progress=False)
    assert out == tmp_path / "cache" / NAME
    cfg, sd = load_native(out)
    assert cfg.name == "coco/kmax_r50"
    for k, v in small_bd.items():
        assert torch.equal(sd[bd_name_to_ours(k)], v), k
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [NAME]  # no temp leftovers
    (root / "kmax_r50.pth").unlink()  # cached: no second download
    assert zoo.get_zoo_checkpoint(NAME, cache_dir=tmp_path / "cache", url=f"{base}/kmax_r50.pth") == out


def test_zoo_bad_sha256_leaves_no_cache_entry(server, small_bd, tmp_path, monkeypatch):
    root, base = server
    torch.save({"model": small_bd}, root / "kmax_r50.pth")
    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(zoo.ZOO[NAME], sha256="0" * 64))
    with pytest.raises(zoo.ZooError, match="SHA-256 mismatch") as e:
        zoo.get_zoo_checkpoint(NAME, cache_dir=tmp_path / "cache", url=f"{base}/kmax_r50.pth", progress=False)
    assert "kmax convert --from detectron2" in str(e.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_zoo_corrupt_download_and_offline(server, small_bd, tmp_path):
    root, base = server
    torch.save({"model": small_bd}, root / "kmax_r50.pth")
    (root / "kmax_r50.pth").write_bytes((root / "kmax_r50.pth").read_bytes()[:500])  # unknown sha: caught by conversion
    with pytest.raises(zoo.ZooError, match="does not convert"):
        zoo.get_zoo_checkpoint(NAME, cache_dir=tmp_path / "cache", url=f"{base}/kmax_r50.pth", progress=False)
    with pytest.raises(zoo.ZooError, match=r"(?s)cannot download .*kmax predict IMAGES\.\.\. -o preds/ --weights"):
        zoo.get_zoo_checkpoint(NAME, cache_dir=tmp_path / "cache", url=f"{base}/missing.pth", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_safe_extract_refuses_traversal(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(zoo.ZooError, match="unsafe path"):
        zoo.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_zoo_table_is_consistent():
    from kmax_deeplab.config import get_preset

    for name, e in zoo.ZOO.items():
        cfg = get_preset(e.preset)
        assert cfg.model.backbone == e.backbone, name
        assert cfg.data.dataset == e.dataset, name
        assert e.url.startswith("https://"), name


def test_convert_command_non_destructive_on_error(small_bd, checkpoint_layouts, tmp_path):
    from kmax_deeplab.cli import main

    src = tmp_path / "model.pth"
    torch.save({"model": small_bd}, src)
    assert main(["convert", "--from", "detectron2", str(src), str(tmp_path / "ok"), "--config", "coco/kmax_r50"]) == 0
    assert (tmp_path / "ok" / "model.safetensors").is_file()
    broken = dict(small_bd)
    broken.pop(next(iter(broken)))
    torch.save({"model": broken}, src)
    dst = tmp_path / "bad"
    assert main(["convert", "--from", "detectron2", str(src), str(dst), "--config", "coco/kmax_r50"]) == 1
    assert not dst.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------- deeplab2 class orders (no TF needed)
def _with_classes(shapes: dict, n_out: int) -> dict:
    out = {}
    for k, s in shapes.items():
        if "transformer_class_head" in k or "semantic_last_layer" in k or "final_conv.conv" in k:
            s = (n_out,) + tuple(s[1:]) if "kernel" not in k else tuple(s[:-1]) + (n_out,)
        out[k] = s
    return out


def test_cityscapes_class_head_reordered(checkpoint_layouts):
    v = random_tf_variables(checkpoint_layouts, "r50")
    for k in list(v):  # make a 19-class (+ void) TF model; the semantic head has 19 outputs (no void)
        if "transformer_class_head/_conv/kernel" in k:
            v[k] = v[k][..., :20].copy()
        elif "transformer_class_head/_conv/bias" in k:
            v[k] = v[k][:20].copy()
        elif k.startswith("semantic_last_layer/kernel"):
            v[k] = v[k][..., :19].copy()
        elif k.startswith("semantic_last_layer/bias"):
            v[k] = v[k][:19].copy()
    target = {k: ((20,) + s[1:] if "_transformer_class_head" in k else (19,) + s[1:] if "final_conv.conv" in k else s)
              for k, s in our_shapes(checkpoint_layouts, "r50").items()}
    sd = convert_deeplab2(v, target, dataset="cityscapes", num_classes=19, backbone="resnet50_deeplab2")
    order = tf_class_order("cityscapes", 19)
    assert order == list(range(11, 19)) + list(range(11))  # things (person..bicycle) first, then stuff
    tf_bias = v["transformer_class_head/_conv/bias/.ATTRIBUTES/VARIABLE_VALUE"]
    ours = sd["predictor._predictor._transformer_class_head.conv.bias"].numpy()
    for k, train_id in enumerate(order):
        assert ours[train_id] == tf_bias[k]
    assert ours[19] == tf_bias[19]  # void stays last
    tf_w = v["transformer_decoder/_kmax_decoder/2/_block1_transformer/_auxiliary_clustering_predictor/"
             "_transformer_class_head/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    ours_w = sd["predictor._kmax_transformer_layers.2._predictor._transformer_class_head.conv.weight"].numpy()
    np.testing.assert_array_equal(ours_w[11, :, 0], tf_w[0, :, 0])  # person: TF channel 0 -> train id 11
    np.testing.assert_array_equal(ours_w[0, :, 0], tf_w[0, :, 8])  # road: TF channel 8 -> train id 0
    sem = v["semantic_last_layer/bias/.ATTRIBUTES/VARIABLE_VALUE"]
    np.testing.assert_array_equal(sd["predictor._auxiliary_semantic_predictor.final_conv.conv.bias"].numpy(), sem)


def test_backbone_family_checked(checkpoint_layouts):
    v = random_tf_variables(checkpoint_layouts, "r50")
    with pytest.raises(CheckpointMismatchError, match="resnet50 backbone but the model is built with backbone 'convnext_tiny'"):
        convert_deeplab2(v, our_shapes(checkpoint_layouts, "convnext_tiny"), dataset="coco", num_classes=133,
                         backbone="convnext_tiny")
    with pytest.raises(CheckpointMismatchError, match="resnet50_deeplab2"):
        convert_deeplab2(v, our_shapes(checkpoint_layouts, "r50"), dataset="coco", num_classes=133, backbone="resnet50")
    # Without the hint the strict check still refuses, listing leftovers on both sides.
    with pytest.raises(CheckpointMismatchError, match="checkpoint entries not used by the model"):
        convert_deeplab2(v, our_shapes(checkpoint_layouts, "convnext_tiny"), dataset="coco", num_classes=133)
