"""Real TF checkpoints written by TensorFlow (deeplab2 names/shapes) -> reader -> converter.

All TensorFlow use is in this module (import ~5 s). Skipped when TensorFlow is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _ckpt_layouts import our_shapes, random_tf_variables, read_tsv, small_model_config, write_tf_checkpoint
from kmax_deeplab.checkpoints.deeplab2_tf import load_deeplab2_checkpoint
from kmax_deeplab.checkpoints.tf_reader import TFCheckpointError, list_variables, load_variables

import tensorflow as tf  # noqa: E402  (test extra; a missing install must fail, not skip)

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


_write_checkpoint = write_tf_checkpoint


@pytest.fixture(scope="module")
def tf_ckpts(checkpoint_layouts, tmp_path_factory):
    """backbone -> (backbone, prefix, variables): each TF checkpoint is written once per module."""
    cache = {}

    def get(backbone: str):
        if backbone not in cache:
            variables = random_tf_variables(checkpoint_layouts, backbone)
            prefix = _write_checkpoint(tmp_path_factory.mktemp(f"tf_{backbone}"), variables)
            cache[backbone] = backbone, prefix, variables
        return cache[backbone]

    return get


@pytest.fixture(scope="module", params=["r50", "convnext_tiny"])
def tf_model_ckpt(request, tf_ckpts):
    return tf_ckpts(request.param)


@pytest.mark.slow
def test_written_names_match_deeplab2_layout(tf_model_ckpt, checkpoint_layouts):
    backbone, prefix, _ = tf_model_ckpt
    expected = read_tsv(checkpoint_layouts / f"deeplab2_kmax_{backbone}_coco.variables.tsv")
    from_tf = {n: tuple(s) for n, s in tf.train.list_variables(prefix)}
    assert from_tf == expected  # the fixture really has deeplab2's names and shapes
    ours = {n: s for n, (_, s) in list_variables(prefix).items()}
    assert ours == expected  # our reader agrees with TensorFlow


@pytest.mark.slow
def test_convert_whole_model(tf_model_ckpt, checkpoint_layouts):
    backbone, prefix, v = tf_model_ckpt
    target = our_shapes(checkpoint_layouts, backbone)
    sd = load_deeplab2_checkpoint(prefix, target, dataset="coco", num_classes=133,
                                  backbone="resnet50_deeplab2" if backbone == "r50" else "convnext_tiny")
    assert set(sd) == set(target)  # strict: every TF tensor consumed, every key produced

    def tfv(name):
        return v[name + SUFFIX]

    def eq(ours, expected):
        np.testing.assert_array_equal(sd[ours].numpy(), expected)

    pd = "pixel_decoder/_stages/0/_block1/_attention/_height_axis"
    eq("pixel_decoder._stages.0._blocks.0._attention._height_axis.qkv_transform.conv.weight",
       tfv(f"{pd}/qkv_kernel").T[:, :, None])  # [in, out] -> [out, in, 1]
    eq("pixel_decoder._stages.0._blocks.0._attention._height_axis._batch_norm_similarity.running_var",
       tfv(f"{pd}/_batch_norm_similarity/moving_variance").reshape(-1))  # [3,1,8,1,1] -> [24], C order
    eq("pixel_decoder._stages.0._blocks.0._attention._height_axis._value_rpe._embeddings.weight",
       tfv(f"{pd}/_value_rpe/embeddings"))
    eq("predictor._cluster_centers.weight", tfv("transformer_decoder/cluster_centers")[0].T)  # [1,N,D] -> [D,N]
    layer = "transformer_decoder/_kmax_decoder/3/_block1_transformer"
    eq("predictor._kmax_transformer_layers.3._pixel_conv1_bn_act.conv.weight",
       tfv(f"{layer}/_pixel_conv1_bn_act/_conv/kernel")[0].T[:, :, None, None])  # [1,in,out] -> [out,in,1,1]
    eq("predictor._kmax_transformer_layers.3._query_ffn_conv1_bn_act.conv.weight",
       tfv(f"{layer}/_memory_ffn_conv1_bn_act/_conv/kernel").transpose(2, 1, 0))  # [k,in,out] -> [out,in,k]
    eq("predictor._kmax_transformer_layers.3._query_self_attention._batch_norm_retrieved_value.weight",
       tfv(f"{layer}/_memory_attention/_batch_norm_retrieved_value/gamma").reshape(-1))
    eq("predictor._kmax_transformer_layers.3._predictor._pixel_space_head_conv0bnact.conv.weight",
       tfv(f"{layer}/_auxiliary_clustering_predictor/_pixel_space_head/conv_block/_conv1_bn_act/_depthwise/"
           "_depthwise_conv/depthwise_kernel").transpose(2, 3, 0, 1))  # [5,5,C,1] -> [C,1,5,5]
    eq("predictor._predictor._transformer_class_head.conv.bias", tfv("transformer_class_head/_conv/bias"))  # COCO: no reorder
    sem = tfv("semantic_last_layer/kernel").transpose(3, 2, 0, 1)
    eq("predictor._auxiliary_semantic_predictor.final_conv.conv.weight", np.concatenate([sem[1:], sem[:1]]))  # void last
    if backbone == "r50":
        eq("backbone.res3.0.shortcut.weight", tfv("encoder/_stage3/_block1/_shortcut/_conv/kernel").transpose(3, 2, 0, 1))
        eq("backbone.res4.5.conv2.norm.running_mean", tfv("encoder/_stage4/_block6/_conv2_bn_act/_batch_norm/moving_mean"))
        eq("backbone.stem.conv1.weight", tfv("encoder/_stem/_conv/kernel").transpose(3, 2, 0, 1))
    else:
        blk = "encoder/stages/2/layer_with_weights-8"
        eq("backbone.stages.2.8.dwconv.weight", tfv(f"{blk}/depthwise_conv/kernel").transpose(3, 2, 0, 1))  # [7,7,1,C]
        eq("backbone.stages.2.8.pwconv1.weight", tfv(f"{blk}/pointwise_conv1/kernel").T)  # Dense [in,out] -> [out,in]
        eq("backbone.stages.2.8.gamma", tfv(f"{blk}/layer_scale").reshape(-1))  # [1,1,1,C] -> [C]
        eq("backbone.downsample_layers.2.0.weight", tfv("encoder/downsample_layers/2/layer_with_weights-0/gamma"))
        eq("backbone.downsample_layers.2.1.weight",
           tfv("encoder/downsample_layers/2/layer_with_weights-1/kernel").transpose(3, 2, 0, 1))


def test_reader_dtypes_and_corruption(tmp_path):
    rng = np.random.default_rng(0)
    vals = {
        "enc/a/kernel" + SUFFIX: rng.standard_normal((3, 3, 4, 5)).astype(np.float32),
        "enc/b/gamma" + SUFFIX: rng.standard_normal(7).astype(np.float16),
        "enc/c/beta" + SUFFIX: np.array([1.5, -2.25, 3.0, 1e-3], np.float32),
    }
    prefix = _write_checkpoint(tmp_path, vals, dtypes={"enc/c/beta" + SUFFIX: tf.bfloat16})
    listed = list_variables(prefix)
    assert listed["enc/b/gamma" + SUFFIX] == ("float16", (7,))
    assert listed["enc/c/beta" + SUFFIX] == ("bfloat16", (4,))
    assert listed["global_step" + SUFFIX] == ("int64", ())
    got = load_variables(prefix, verify_checksums=True)
    reader = tf.train.load_checkpoint(prefix)
    for name in vals:
        ref = reader.get_tensor(name)
        np.testing.assert_array_equal(got[name], np.asarray(ref, dtype=got[name].dtype))
    assert got["enc/b/gamma" + SUFFIX].dtype == np.float16
    # bf16 -> float32 is exact: these values are representable, 1e-3 is rounded by TF.
    np.testing.assert_array_equal(got["enc/c/beta" + SUFFIX][:3], [1.5, -2.25, 3.0])
    assert int(got["global_step" + SUFFIX]) == 150000

    data = tmp_path / "ckpt-1.data-00000-of-00001"
    blob = data.read_bytes()
    data.write_bytes(blob[:100])  # truncated data shard
    with pytest.raises(TFCheckpointError, match=r"ckpt-1\.data-00000-of-00001: truncated data file"):
        load_variables(prefix)
    flipped = bytearray(blob)
    flipped[10] ^= 0xFF  # corrupt one byte of the first tensor
    data.write_bytes(bytes(flipped))
    with pytest.raises(TFCheckpointError, match="CRC32C mismatch"):
        load_variables(prefix)  # always verified (issue 14): no flag needed
    # the pure-Python fallback catches it too
    import kmax_deeplab.checkpoints.checksums as checksums

    native = checksums._NATIVE
    checksums._NATIVE = None
    try:
        with pytest.raises(TFCheckpointError, match="CRC32C mismatch"):
            load_variables(prefix)
    finally:
        checksums._NATIVE = native
    # and `kmax convert` says so in one line
    from kmax_deeplab import cli

    assert cli.main(["convert", "--from", "deeplab2", str(prefix), str(tmp_path / "out"),
                     "--config", "synthetic/kmax_tiny"]) == 1
    assert not (tmp_path / "out").exists()
    index = tmp_path / "ckpt-1.index"
    index.write_bytes(index.read_bytes()[:-20])
    with pytest.raises(TFCheckpointError, match=r"ckpt-1\.index: not a TF checkpoint index"):
        list_variables(prefix)
    with pytest.raises(TFCheckpointError, match="not found"):
        list_variables(tmp_path / "nothing")


# ------------------------------------------------------------------ into the real model (issue #6)
PRESET = {"r50": "coco/kmax_r50_deeplab2", "convnext_tiny": "coco/kmax_convnext_tiny_deeplab2"}
ZOO_NAME = {"r50": "kmax_r50_coco", "convnext_tiny": "kmax_convnext_tiny_coco"}


@pytest.mark.slow
def test_strict_load_into_real_model_and_forward(tf_model_ckpt):
    import torch

    from kmax_deeplab.modeling.kmax import build_kmax

    backbone, prefix, v = tf_model_ckpt
    cfg = small_model_config(PRESET[backbone])
    model = build_kmax(cfg.model).eval()
    sd = load_deeplab2_checkpoint(prefix, model, dataset="coco", num_classes=133, backbone=cfg.model.backbone)
    model.load_state_dict(sd, strict=True)
    # Every TF variable became exactly one tensor of ours (only num_batches_tracked are made up).
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == len(v)
    own = model.state_dict()
    assert all(torch.equal(own[k], sd[k]) for k in sd)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 65, 65, generator=torch.Generator().manual_seed(0)) * 255)
    assert out["pred_logits"].shape == (1, 128, 134) and out["pred_masks"].shape == (1, 128, 17, 17)
    for k in ("pred_logits", "pred_masks", "pixel_feature"):
        assert torch.isfinite(out[k]).all(), k
    norms = out["pixel_feature"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


def _check_prediction_set(out_dir: Path, images: list[Path]) -> None:
    """The folder holds one COCO-panoptic PNG per image and a consistent predictions.json."""
    from PIL import Image

    from kmax_deeplab.data.catalog import get_dataset_meta
    from kmax_deeplab.engine.writers import rgb_to_id

    data = json.loads((out_dir / "predictions.json").read_text())
    cats = {c["id"]: c for c in get_dataset_meta("coco").categories}
    assert {c["id"] for c in data["categories"]} == set(cats)
    assert len(data["annotations"]) == len(images)
    for ann, img in zip(sorted(data["annotations"], key=lambda a: a["file_name"]), sorted(images)):
        assert ann["file_name"] == img.stem + ".png"
        ids = rgb_to_id(np.asarray(Image.open(out_dir / ann["file_name"]).convert("RGB")))
        assert ids.shape == Image.open(img).size[::-1]  # original resolution
        seg_ids = [s["id"] for s in ann["segments_info"]]
        assert len(set(seg_ids)) == len(seg_ids) and 0 not in seg_ids
        assert set(np.unique(ids)) - {0} == set(seg_ids)
        for s in ann["segments_info"]:
            assert s["area"] == int((ids == s["id"]).sum()) > 0
            assert s["category_id"] in cats and s["isthing"] == bool(cats[s["category_id"]]["isthing"])


@pytest.mark.slow
def test_convert_then_predict_cli(tf_ckpts, coco_sample, tmp_path):
    """R50 here; ConvNeXt-T goes through the zoo test below."""
    from kmax_deeplab.cli import main
    from kmax_deeplab.config import load_config

    backbone, prefix, _ = tf_ckpts("r50")
    native = tmp_path / "native"
    assert main(["convert", "--from", "deeplab2", prefix + ".index", str(native), "--config", PRESET[backbone]]) == 0
    cfg = load_config(native / "config.yaml")
    assert cfg.name == PRESET[backbone] and cfg.model.backbone == "resnet50_deeplab2"
    assert cfg.model.reference == "deeplab2" and cfg.postprocess.variant == "deeplab2"
    images = sorted((coco_sample / "sample_data" / "input_images").glob("*.jpg"))
    out = tmp_path / "pred"
    assert main(["predict", *map(str, images), "-o", str(out), "--weights", str(native), "--quiet",
                 "--opts", "model.image_size=[65,65]"]) == 0
    _check_prediction_set(out, images)


@pytest.mark.slow
def test_tf_zoo_archive_end_to_end(tf_ckpts, coco_sample, tmp_path, monkeypatch):
    """download (local HTTP) -> verify SHA-256 -> safe extract -> convert -> cache -> Predictor (ConvNeXt-T)."""
    import dataclasses
    import functools
    import hashlib
    import http.server
    import tarfile
    import threading

    from kmax_deeplab.checkpoints import zoo
    from kmax_deeplab.engine.predictor import Predictor

    backbone, prefix, _ = tf_ckpts("convnext_tiny")
    name = ZOO_NAME[backbone]
    www = tmp_path / "www"
    www.mkdir()
    archive = www / f"{name}.tar.gz"
    folder = zoo.ZOO[name].url.rsplit("/", 1)[-1][: -len(".tar.gz")]
    with tarfile.open(archive, "w:gz", compresslevel=0) as tar:  # one folder, as deeplab2 ships them (gzip, stored)
        for suffix in (".index", ".data-00000-of-00001"):
            tar.add(prefix + suffix, arcname=f"{folder}/ckpt-150000{suffix}")
    small = tmp_path / "small.yaml"  # the zoo preset at a 65x65 canvas (weights do not depend on it)
    small.write_text(f"base: {PRESET[backbone]}\nmodel:\n  image_size: [65, 65]\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        entry = dataclasses.replace(zoo.ZOO[name], url=f"http://127.0.0.1:{httpd.server_address[1]}/{archive.name}",
                                    sha256=hashlib.sha256(archive.read_bytes()).hexdigest(), preset=str(small))
        monkeypatch.setitem(zoo.ZOO, name, entry)
        monkeypatch.setenv("KMAX_CACHE", str(tmp_path / "cache"))
        predictor = Predictor.from_zoo(name)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [name]  # no temp leftovers
    assert predictor.canvas == (65, 65) and predictor.cfg.model.backbone == zoo.ZOO[name].backbone
    assert predictor.cfg.model.reference == "deeplab2"  # a TF zoo entry is deeplab2's network
    images = sorted((coco_sample / "sample_data" / "input_images").glob("*.jpg"))
    from kmax_deeplab.commands.predict import predict_files

    done, errors = predict_files(predictor, images, tmp_path / "pred", progress=False)
    assert (done, errors) == (len(images), [])
    _check_prediction_set(tmp_path / "pred", images)
    archive.unlink()  # a second call uses the cache, no download
    assert zoo.get_zoo_checkpoint(name) == tmp_path / "cache" / name
