"""deeplab2's ImageNet axial-backbone initial checkpoints (``max_deeplab_{s,l}_backbone``) -> MaX-DeepLab.

Oracle: ``tests/data/parity/max_deeplab/deeplab2_max_s_backbone.layout.tsv`` (and the L one),
every entry of ``tf.train.Checkpoint(encoder=...)`` of deeplab2's own backbone encoder
(@64bc1c1, ``tools/deeplab2_max_init.py``), which deeplab2's ``maybe_load_checkpoint``
restores, all of it and nothing else, into the COCO model (491 of 907 entries for S). The
seeded values (``tests/_max_parity.py``, by name) are written as a real TF checkpoint,
imported with ``kmax convert --from imagenet`` and compared with the full deeplab2
conversion of the same seeded values; the split must equal deeplab2's backbone LR rule.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from _ckpt_layouts import TF_SUFFIX, write_tf_checkpoint
from _max_parity import DATA, read_layout, seeded_variables
from kmax_deeplab.checkpoints.deeplab2_max import convert_deeplab2_max, convert_deeplab2_max_init
from kmax_deeplab.checkpoints.table import CheckpointMismatchError
from kmax_deeplab.modeling.max_deeplab.family import is_pretrained_encoder_parameter
from test_max_deeplab_parity import _model

S_INIT = DATA / "deeplab2_max_s_backbone.layout.tsv"
L_INIT = DATA / "deeplab2_max_l_backbone.layout.tsv"
S_FULL = DATA / "deeplab2_max_s_129.layout.tsv"


@functools.lru_cache(maxsize=None)
def _shapes(variant: str) -> dict:
    return {k: tuple(v.shape) for k, v in _model(variant, meta=True).state_dict().items()}


def _convert(variables, variant="s", shapes=None, **kw):
    return convert_deeplab2_max_init(variables, shapes if shapes is not None else _shapes(variant), variant=variant,
                                     is_backbone=is_pretrained_encoder_parameter, **kw)


def test_layout_is_what_deeplab2_restores():
    header = S_INIT.read_text().splitlines()[0]
    layout = read_layout(S_INIT)
    assert "restores all 491" in header and "leaves 416 of its 907" in header and len(layout) == 491
    full = dict(read_layout(S_FULL))
    assert all(full[k] == shape for k, shape in layout)  # same object paths and shapes as the COCO model
    assert not any(w in k for k, _ in layout for w in ("transformer", "extra", "memory_feature"))


def test_l_layout_converts_strictly():
    shapes = _shapes("l")
    layout = read_layout(L_INIT)
    # zero-stride views: shapes without 700 MB of values (the converter only moves and checks shapes)
    fake = {name: np.broadcast_to(np.float32(0), shape) for name, shape in layout}
    sd, report = _convert(fake, "l", shapes=shapes)
    assert set(sd) == {k for k in shapes if is_pretrained_encoder_parameter(k)}
    assert any(k.startswith("encoder.decoder_stage") for k in sd)  # the backbone hourglass decoder
    # the backbone hourglass decoder's dual-path transformers are not ImageNet-pretrained (deeplab2's rule)
    left = [k for k in report.left_at_init if k.startswith("encoder.decoder_stage") and "_extra" not in k]
    assert left and all("_transformer." in k for k in left)
    header = L_INIT.read_text().splitlines()[0]
    assert "restores all 462" in header and len(layout) == 462


def test_refusals_name_expected_and_found_in_one_line():
    layout = read_layout(S_INIT)
    fake = {name: np.zeros(1, np.float32) for name, _ in layout}
    cases = [
        (dict(fake), "l", "holds a max_deeplab_s_backbone checkpoint but the model needs max_deeplab_l_backbone"),
        ({n: np.zeros(1, np.float32) for n, _ in read_layout(S_FULL)}, "s",
         "full max_deeplab_s checkpoint but an initial checkpoint of max_deeplab_s_backbone"),
        ({"transformer_decoder/cluster_centers": np.zeros(1), "encoder/_stem/_conv1_bn_act/_conv/kernel": np.zeros(1)},
         "s", "full kmax checkpoint"),
        ({"layer1.0.conv1.weight": np.zeros(1)}, "s", "not a deeplab2 axial-backbone checkpoint"),
    ]
    for variables, variant, message in cases:
        with pytest.raises(CheckpointMismatchError) as e:
            _convert(variables, variant, shapes={})
        assert message in str(e.value) and "\n" not in str(e.value)


def test_strict_about_the_backbone_part():
    shapes = _shapes("s")
    variables = {k: np.zeros(s, np.float32) for k, s in read_layout(S_INIT)}
    missing = dict(variables)
    del missing["encoder/_stage4/_block3/_attention/_height_axis/_query_rpe/embeddings"]
    with pytest.raises(CheckpointMismatchError, match=r"stage4\.block3\.attention\._height_axis\._query_rpe"):
        _convert(missing, shapes=shapes)
    extra = dict(variables, **{"encoder/_stage5/_block1_transformer/_memory_conv1_bn_act/_conv/kernel":
                               np.zeros((1, 256, 256), np.float32)})
    with pytest.raises(CheckpointMismatchError, match="block1_transformer"):
        _convert(extra, shapes=shapes)
    # TF Model Garden layout and non-encoder entries (classifier head, counters) are accepted
    garden = {"backbone/_encoder/" + k[len("encoder/"):]: v for k, v in variables.items()}
    garden.update({"head/_classifier/kernel": np.zeros((2048, 1000), np.float32),
                   "global_step": np.zeros((), np.int64)})
    sd, report = _convert(garden, shapes=shapes)
    assert len(sd) == len({k for k in shapes if is_pretrained_encoder_parameter(k)})
    assert report.skipped == ("global_step", "head/_classifier/kernel")


@pytest.mark.slow
def test_kmax_convert_from_imagenet_with_a_real_tf_checkpoint(tmp_path, capsys):
    """End to end; the split equals deeplab2's backbone LR rule; values equal the COCO converter's."""
    from kmax_deeplab.checkpoints.native import load_native
    from kmax_deeplab.cli import main

    seeded = seeded_variables(read_layout(S_INIT), 0)
    variables = {k + TF_SUFFIX: v for k, v in seeded.items()}
    variables["head/_classifier/kernel" + TF_SUFFIX] = np.ones((4, 10), np.float32)  # an ImageNet head: skipped
    prefix = write_tf_checkpoint(tmp_path / "tf", variables)  # + global_step, skipped by rule
    assert main(["convert", "--from", "imagenet", prefix, str(tmp_path / "init"),
                 "--config", "coco/max_deeplab_s_641"]) == 0
    err = capsys.readouterr().err
    shapes = _shapes("s")
    backbone = {k for k in shapes if is_pretrained_encoder_parameter(k)}
    params = sum(int(np.prod(shapes[k])) for k in backbone
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert params == 41_343_424  # deeplab2's backbone_optimizer (trainable) variables
    assert (f"set {len(backbone)} backbone entries; left {len(shapes) - len(backbone)} at their initialisation "
            "(encoder.class_feature_extra, encoder.decoder_stage1_extra, encoder.decoder_stage1_extra_resized_fuse, "
            "encoder.decoder_stage2_extra, encoder.decoder_stage2_extra_resized_fuse, encoder.mask_feature_extra, "
            "encoder.memory_feature, encoder.stage5.*_transformer, encoder.stage5_extra, "
            "encoder.stage5_extra.*_transformer, "
            "predictor, semantic_head); "
            "skipped 1 checkpoint entries outside encoder/") in err
    _, state = load_native(tmp_path / "init")
    assert set(state) == set(shapes)
    # the COCO converter (non-strict, same entries + its family marker) gives the same tensors
    marker = {"encoder/memory_feature": np.zeros((1, 128, 256), np.float32)}
    full = convert_deeplab2_max(dict(seeded, **marker), shapes, variant="s", strict=False)
    loaded = [k for k in backbone if not k.endswith("num_batches_tracked")]
    assert set(loaded) <= set(full)
    for k in loaded:
        assert torch.equal(state[k], full[k]), k
