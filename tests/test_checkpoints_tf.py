"""Real TF checkpoints written by TensorFlow (deeplab2 names/shapes) -> reader -> converter.

All TensorFlow use is in this module (import ~5 s). Skipped when TensorFlow is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from _ckpt_layouts import our_shapes, random_tf_variables, read_tsv
from kmax_deeplab.checkpoints.deeplab2_tf import load_deeplab2_checkpoint
from kmax_deeplab.checkpoints.tf_reader import TFCheckpointError, list_variables, load_variables

tf = pytest.importorskip("tensorflow")

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _write_checkpoint(directory, variables: dict[str, np.ndarray], dtypes: dict[str, object] | None = None) -> str:
    """Write ``variables`` with tf.train.Checkpoint so the object-graph names equal the keys.

    Each name ``a/b/c/.ATTRIBUTES/VARIABLE_VALUE`` becomes attribute ``c`` of a tf.Module
    reached by attributes ``a``, ``b`` from the checkpoint root, as deeplab2's trainer does.
    """
    dtypes = dtypes or {}
    tree: dict = {}
    for name, value in variables.items():
        parts = name[: -len(SUFFIX)].split("/")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = tf.Variable(value, dtype=dtypes.get(name, tf.as_dtype(value.dtype)))

    def build(node):
        if not isinstance(node, dict):
            return node
        m = tf.Module()
        for k, v in node.items():
            setattr(m, k, build(v))
        return m

    root = {k: build(v) for k, v in tree.items()}
    root["global_step"] = tf.Variable(150000, dtype=tf.int64)
    return tf.train.Checkpoint(**root).save(str(directory / "ckpt"))


@pytest.fixture(scope="module", params=["r50", "convnext_tiny"])
def tf_model_ckpt(request, checkpoint_layouts, tmp_path_factory):
    backbone = request.param
    variables = random_tf_variables(checkpoint_layouts, backbone)
    prefix = _write_checkpoint(tmp_path_factory.mktemp(f"tf_{backbone}"), variables)
    return backbone, prefix, variables


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
        load_variables(prefix, verify_checksums=True)
    index = tmp_path / "ckpt-1.index"
    index.write_bytes(index.read_bytes()[:-20])
    with pytest.raises(TFCheckpointError, match=r"ckpt-1\.index: not a TF checkpoint index"):
        list_variables(prefix)
    with pytest.raises(TFCheckpointError, match="not found"):
        list_variables(tmp_path / "nothing")
