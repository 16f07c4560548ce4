"""BD detectron2 <-> ours, safe loading, and hostile/malformed inputs (no TensorFlow needed)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from _ckpt_layouts import bd_name_to_ours, our_shapes, random_bd_state
from kmax_deeplab.checkpoints.detectron2 import (
    bd_to_ours,
    load_detectron2_checkpoint,
    ours_to_bd,
    save_detectron2,
)
from kmax_deeplab.checkpoints.safe_load import UnsafeCheckpointError, load_weights_file
from kmax_deeplab.checkpoints.table import CheckpointMismatchError


@pytest.mark.parametrize("backbone", ["r50", "convnext_tiny"])
def test_bd_roundtrip_is_lossless(checkpoint_layouts, backbone):
    bd = random_bd_state(checkpoint_layouts, backbone)
    target = our_shapes(checkpoint_layouts, backbone)
    ours = bd_to_ours(bd, target)
    assert set(ours) == set(target)  # every model key produced, nothing left over
    # Contract renames, checked on named examples.
    assert "predictor._predictor._transformer_class_head.conv.weight" in ours
    assert "predictor._kmax_transformer_layers.5._predictor._pixel_space_mask_batch_norm.weight" in ours
    for k, v in bd.items():
        assert torch.equal(ours[bd_name_to_ours(k)], v), k
    back = ours_to_bd(ours)
    assert set(back) == set(bd)
    assert "sem_seg_head.predictor._predcitor._transformer_class_head.conv.bias" in back
    for k, v in bd.items():
        assert np.array_equal(back[k], v.numpy()), k


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_file_roundtrip(checkpoint_layouts, tmp_path, suffix):
    # Small tensors only (every name kind is still there) to keep the file I/O quick.
    bd = {k: v for k, v in random_bd_state(checkpoint_layouts, "r50", seed=1).items() if v.numel() < 70_000}
    target = {bd_name_to_ours(k): tuple(v.shape) for k, v in bd.items()}
    ours = bd_to_ours(bd, target)
    path = save_detectron2(ours, tmp_path / f"model{suffix}")
    if suffix == ".pkl":
        with open(path, "rb") as f:  # our own freshly written file
            raw = pickle.load(f)
        assert raw["matching_heuristics"] is True and isinstance(raw["model"]["backbone.stem.conv1.weight"], np.ndarray)
    loaded = load_detectron2_checkpoint(path, target)
    assert set(loaded) == set(target)
    for k in ours:
        assert torch.equal(loaded[k], ours[k]), k


def test_coconut_spelling_accepted(checkpoint_layouts):
    bd = random_bd_state(checkpoint_layouts, "r50")
    fixed = {k.replace("_predcitor", "_predictor"): v for k, v in bd.items()}
    assert set(bd_to_ours(fixed, our_shapes(checkpoint_layouts, "r50"))) == set(our_shapes(checkpoint_layouts, "r50"))


def test_class_count_mismatch_is_reported(checkpoint_layouts):
    bd = random_bd_state(checkpoint_layouts, "r50")  # COCO: 134 class outputs
    target = our_shapes(checkpoint_layouts, "r50")
    cityscapes = {k: ((20,) + v[1:] if "_transformer_class_head" in k else v) for k, v in target.items()}
    with pytest.raises(CheckpointMismatchError) as e:
        bd_to_ours(bd, cityscapes)
    msg = str(e.value)
    assert "shape mismatches 14:" in msg  # 7 predictors x (weight, bias)
    assert "checkpoint [134, 256, 1] vs model [20, 256, 1]" in msg


def test_wrong_backbone_lists_leftovers(checkpoint_layouts):
    bd = random_bd_state(checkpoint_layouts, "r50")
    target = our_shapes(checkpoint_layouts, "convnext_tiny")
    with pytest.raises(CheckpointMismatchError) as e:
        bd_to_ours(bd, target)
    msg = str(e.value)
    ours_names = {bd_name_to_ours(k) for k in bd}
    n_unused = sum(k.startswith("backbone.") for k in bd)  # the whole R50
    n_missing = sum(k not in ours_names and not k.endswith("num_batches_tracked") for k in target)
    assert n_missing > 170  # the whole ConvNeXt + the decoder's extra shortcut
    assert f"checkpoint entries not used by the model {n_unused}:" in msg
    assert f"model entries missing from the checkpoint {n_missing}:" in msg
    assert "backbone.downsample_layers.0.0.bias" in msg
    assert "... and" in msg  # lists are cut at 20 names


def test_missing_keys_strict_and_non_strict(checkpoint_layouts):
    bd = random_bd_state(checkpoint_layouts, "convnext_tiny")
    target = our_shapes(checkpoint_layouts, "convnext_tiny")
    del bd["sem_seg_head.predictor._cluster_centers.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing from the checkpoint 1: predictor\._cluster_centers\.weight"):
        bd_to_ours(bd, target)
    partial = bd_to_ours(bd, target, strict=False)
    assert set(partial) == set(target) - {"predictor._cluster_centers.weight"}


def test_num_batches_tracked_created_when_absent(checkpoint_layouts):
    bd = {k: v for k, v in random_bd_state(checkpoint_layouts, "r50").items() if not k.endswith("num_batches_tracked")}
    ours = bd_to_ours(bd, our_shapes(checkpoint_layouts, "r50"))
    assert ours["backbone.stem.conv1.norm.num_batches_tracked"].dtype == torch.int64
    assert int(ours["backbone.stem.conv1.norm.num_batches_tracked"]) == 0


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_hostile_pickle_is_refused_and_not_executed(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    payload = {"model": {"backbone.stem.conv1.weight": np.zeros(3, np.float32), "x": _Evil(marker)}}
    if suffix == ".pth":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="evil"):
        load_weights_file(path)
    assert not marker.exists()


def test_truncated_pth_is_a_clear_error(checkpoint_layouts, tmp_path):
    path = tmp_path / "model.pth"
    state = {k: v for k, v in random_bd_state(checkpoint_layouts, "r50").items() if v.numel() < 70_000}
    torch.save({"model": state}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.pth: not a valid PyTorch weights file"):
        load_weights_file(path)


def test_truncated_pkl_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": {"a": np.ones((64, 64), np.float32)}})[:-100])
    with pytest.raises(ValueError, match=r"model\.pkl: not a valid pickle"):
        load_weights_file(path)


def test_protocol2_numpy_pickle_loads(tmp_path):
    path = tmp_path / "R-50.pkl"
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    path.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": arr}, "__author__": "x"}, protocol=2))
    assert np.array_equal(load_weights_file(path)["stem.conv1.weight"], arr)
