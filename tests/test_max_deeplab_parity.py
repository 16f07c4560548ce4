"""MaX-DeepLab-S against deeplab2's own model, stage by stage, through our converter.

Oracle: ``tests/data/parity/max_deeplab/deeplab2_max_s_129_seed0.npz``, outputs of
deeplab2 @64bc1c1 (TensorFlow 2.21 CPU, eval mode, 129×129 crop) for the seeded weights
``tests/_max_parity.py:seeded_variables``; regenerate with ``tools/deeplab2_max_parity.py``.
The test rebuilds those weights in deeplab2's checkpoint layout (the committed
``.layout.tsv``: every entry of ``tf.train.Checkpoint(**model.checkpoint_items)``),
converts them with :func:`convert_deeplab2_max` and compares our outputs.
Measured when the record was made: ≤ 2.6e-6 absolute, ≤ 1.6e-6 relative to each
output's max, mask argmax agreement 100 %.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _max_parity import DATA, GOLDEN_SLICES, read_layout, seeded_image, seeded_variables
from kmax_deeplab.checkpoints.deeplab2_max import convert_deeplab2_max, detect_family
from kmax_deeplab.checkpoints.table import CheckpointMismatchError
from kmax_deeplab.modeling.max_deeplab import build_max_deeplab

LAYOUT = DATA / "deeplab2_max_s_129.layout.tsv"
GOLDEN = DATA / "deeplab2_max_s_129_seed0.npz"
REL_TOL = 1e-4


def _model(variant="s", size=(129, 129), meta=False):
    cfg = SimpleNamespace(variant=variant, image_size=size, num_classes=133)
    if meta:
        with torch.device("meta"):
            return build_max_deeplab(cfg)
    return build_max_deeplab(cfg)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    # [B, C, H, W] -> [B, H, W, C]; [B, D, N] -> [B, N, D]
    return (t.permute(0, 2, 3, 1) if t.dim() == 4 else t.transpose(1, 2)).numpy()


@pytest.fixture(scope="module")
def seeded():
    """(seeded TF variables, converted state dict, our model's shapes): one conversion for the file."""
    variables = seeded_variables(read_layout(LAYOUT), 0)
    torch.manual_seed(0)
    model = _model()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return variables, convert_deeplab2_max(variables, model, variant="s"), shapes, model


@pytest.mark.slow
def test_max_s_matches_deeplab2_stage_by_stage(seeded):
    _, state, _, model = seeded
    model.load_state_dict(state)
    model.eval()
    image = torch.from_numpy(seeded_image(129, 129, 0)).permute(2, 0, 1)[None]
    with torch.no_grad():
        f = model.forward_features(image)
        out = model(image)
        sem = _nhwc(model.semantic_head(f["feature_semantic"], f["res3"], f["res2"]))
    ours = {k: _nhwc(f[k]) for k in ("stage1", "stage2", "stage3", "stage4", "stage5", "feature_panoptic",
                                     "transformer_class_feature", "transformer_mask_feature")}
    ours["transformer_class_logits"] = out["pred_logits"].numpy()
    ours["pixel_space_mask_logits"] = _nhwc(out["pred_masks"])
    ours["pixel_space_normalized_feature"] = _nhwc(out["pixel_feature"])
    ours["semantic_logits"] = np.concatenate([sem[..., -1:], sem[..., :-1]], -1)  # TF keeps void at channel 0
    golden = dict(np.load(GOLDEN))
    report = {}
    for key, slices in GOLDEN_SLICES.items():
        mine, ref = ours[key][0][slices], golden[key]
        assert mine.shape == ref.shape, key
        report[key] = float(np.abs(mine - ref).max() / np.abs(ref).max())
    assert {k: v for k, v in report.items() if not v <= REL_TOL} == {}, report
    mask_argmax = ours["pixel_space_mask_logits"][0].argmax(-1)
    assert (mask_argmax == golden["mask_argmax"]).mean() >= 0.999
    assert np.array_equal(ours["transformer_class_logits"][0].argmax(-1), golden["class_argmax"])


@pytest.mark.slow
def test_converter_is_strict_and_names_the_leftovers(seeded):
    variables, state, shapes, _ = seeded
    assert set(state) == set(shapes)  # every model entry produced from the 907 TF entries
    # a whole dual-path layer, converted alone against its own target entries
    part = {k: v for k, v in variables.items() if k.startswith("encoder/_stage5/_block2_transformer/")}
    part_shapes = {k: v for k, v in shapes.items() if k.startswith("encoder.stage5.block2_transformer.")}
    assert len(part) == 56 and len(part_shapes) == 68  # 8 kernels + 12 BNs (+ 12 num_batches_tracked)
    part["encoder/memory_feature"] = variables["encoder/memory_feature"]  # family marker
    part_shapes["encoder.memory_feature"] = shapes["encoder.memory_feature"]
    part["encoder/_stem/_conv1_bn_act/_conv/kernel"] = variables["encoder/_stem/_conv1_bn_act/_conv/kernel"]
    part_shapes["encoder.stem.conv1_bn_act.conv.weight"] = shapes["encoder.stem.conv1_bn_act.conv.weight"]
    assert set(convert_deeplab2_max(part, part_shapes, variant="s")) == set(part_shapes)
    # optimizer slots, both optimizers and the counters are skipped by rule
    extra = dict(part, **{"global_step": np.zeros((), np.int64), "save_counter": np.zeros((), np.int64),
                          "backbone_optimizer/iter": np.zeros((), np.int64),
                          "encoder/_stem/_conv1_bn_act/_conv/kernel/.OPTIMIZER_SLOT/optimizer/m": np.zeros(1)})
    assert set(convert_deeplab2_max(extra, part_shapes, variant="s")) == set(part_shapes)
    missing = dict(part)
    del missing["encoder/_stage5/_block2_transformer/_pixel_attention/_batch_norm_similarity/gamma"]
    with pytest.raises(CheckpointMismatchError, match=r"stage5\.block2_transformer\._pixel_attention"):
        convert_deeplab2_max(missing, part_shapes, variant="s")
    with pytest.raises(CheckpointMismatchError, match="encoder/_stage9/_block1/_conv1_bn_act/_conv/kernel"):
        convert_deeplab2_max(dict(part, **{"encoder/_stage9/_block1/_conv1_bn_act/_conv/kernel": np.zeros(1)}),
                             part_shapes, variant="s")
    bad = dict(part)
    bad["encoder/memory_feature"] = np.zeros((1, 64, 256), np.float32)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        convert_deeplab2_max(bad, part_shapes, variant="s")


def test_wrong_family_or_variant_is_refused_in_one_line():
    layout = read_layout(LAYOUT)
    fake = {name: np.zeros(1, np.float32) for name, _ in layout}  # refused before any shape is read
    assert detect_family(list(fake)) == "max_deeplab_s"
    with pytest.raises(CheckpointMismatchError) as e:
        convert_deeplab2_max(fake, {}, variant="l")
    assert str(e.value).count("\n") == 0
    assert "max_deeplab_s checkpoint" in str(e.value) and "model is max_deeplab_l" in str(e.value)
    kmax = {"transformer_decoder/cluster_centers": np.zeros((1, 128, 256), np.float32),
            "encoder/_stem/_conv1_bn_act/_conv/kernel": np.zeros((3, 3, 3, 64), np.float32)}
    with pytest.raises(CheckpointMismatchError, match="holds a kmax checkpoint but the model is max_deeplab_s"):
        convert_deeplab2_max(kmax, {}, variant="s")
