"""Semantic datasets and mmseg's training pipeline pieces.

Oracle: mmseg 0.30 / mmcv 1.7.2 (OpenCV) outputs recorded on seeded inputs with scripted
random draws (``tests/data/semantic/mmseg_pipeline_golden.npz``, made by
``tools/record_mmseg_pipeline.py``), and hand-computed cases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab.data.semantic import (
    ADE20KSemanticDataset,
    PadSemantic,
    PhotoMetricDistortion,
    RandomCropCatMax,
    RandomResize,
    SemanticDataError,
    SemanticSegDataset,
    build_semantic_transforms,
    rescale_size,
)

GOLDEN = np.load(Path(__file__).parent / "data" / "semantic" / "mmseg_pipeline_golden.npz")


class Scripted:
    """A ``numpy.random.Generator`` stand-in returning scripted draws in order."""

    def __init__(self, values):
        self.values = list(values)

    def _next(self, *a, **k):
        return self.values.pop(0)

    integers = uniform = random = _next


def test_rescale_size_hand():
    # ADE20K-like 683x512 photo, ratio 0.5 of (2048, 512): f = min(1024/683, 256/512) = 0.5.
    assert rescale_size(512, 683, (1024, 256)) == (256, 342)
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(100, 300, (2048, 512)) == (512, 1536)  # f = min(2048 / 300, 512 / 100)
    assert rescale_size(100, 500, (2048, 512)) == (410, 2048)  # f = 2048 / 500: 409.6 -> 410


@pytest.mark.parametrize("i", range(5))
def test_resize_against_mmseg(i):
    g = lambda k: GOLDEN[f"resize{i}_{k}"]  # noqa: E731
    rec = {"image": g("in_img"), "sem_seg": g("in_seg").astype(np.int64)}
    out = RandomResize((128, 32), (0.5, 2.0))(rec, Scripted([(float(g("ratio")) - 0.5) / 1.5]))
    assert out["sem_seg"].shape == g("seg").shape
    np.testing.assert_array_equal(out["sem_seg"], g("seg"))  # OpenCV INTER_NEAREST exactly
    diff = np.abs(out["image"].astype(int) - g("img").astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.2  # OpenCV's fixed-point INTER_LINEAR rounding


def test_crop_cat_max_against_mmseg():
    seg = GOLDEN["crop_seg"].astype(np.int64)
    for name in ("crop_found", "crop_never"):
        s = seg if name == "crop_found" else np.zeros_like(seg)
        script = Scripted(GOLDEN[f"{name}_offsets"].tolist())
        out = RandomCropCatMax((20, 20), 0.75)({"image": np.zeros((40, 40, 3), np.uint8), "sem_seg": s}, script)
        np.testing.assert_array_equal(out["sem_seg"], GOLDEN[f"{name}_seg"])
        used = len(GOLDEN[f"{name}_offsets"]) - len(script.values)
        assert used == int(GOLDEN[f"{name}_used"])  # same number of windows drawn
    assert int(GOLDEN["crop_never_used"]) == 22  # first window + 10 re-draws


@pytest.mark.parametrize("name,tol", [("pmd_bc", 0), ("pmd_contrast_last", 0), ("pmd_sat", 6), ("pmd_hue", 6)])
def test_photometric_against_mmseg(name, tol):
    script = GOLDEN[f"{name}_script"].tolist()
    script = [int(v) if float(v).is_integer() else v for v in script]  # coins / hue steps are ints
    out = PhotoMetricDistortion()({"image": GOLDEN["pmd_in"]}, Scripted(script))["image"]
    diff = np.abs(out.astype(int) - GOLDEN[name].astype(int))
    assert diff.max() <= tol, (name, diff.max())  # sat/hue: continuous vs OpenCV 8-bit HSV
    if tol:
        assert diff.mean() < 1.0
        assert np.abs(GOLDEN[name].astype(int) - GOLDEN["pmd_in"].astype(int)).max() > 10 * tol


def _write_ade(root: Path, raws: list[np.ndarray]) -> Path:
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
    for i, raw in enumerate(raws):
        img = rng.integers(0, 256, (*raw.shape, 3), dtype=np.uint8)
        Image.fromarray(img).save(base / "images" / "training" / f"ADE_train_{i:08d}.jpg", quality=95)
        Image.fromarray(raw.astype(np.uint8)).save(base / "annotations" / "training" / f"ADE_train_{i:08d}.png")
    return base


def test_ade20k_reduce_zero_label(tmp_path):
    raw = np.tile(GOLDEN["reduce_in"], (4, 4))
    _write_ade(tmp_path, [raw, raw[:4]])
    ds = ADE20KSemanticDataset(tmp_path, "training")
    assert len(ds) == 2 and ds.num_classes == 150 and ds.classes[0] == "wall" and ds.palette[0] == (120, 120, 120)
    rec = ds[0]
    assert rec["image"].shape == (8, 12, 3) and rec["image"].dtype == np.uint8
    np.testing.assert_array_equal(rec["sem_seg"], np.tile(GOLDEN["reduce_out"], (4, 4)))  # mmseg LoadAnnotations
    with pytest.raises(SemanticDataError, match="annotation folder not found|image folder not found|no '"):
        ADE20KSemanticDataset(tmp_path / "ADEChallengeData2016", "validation")


def test_generic_pairs_and_errors(tmp_path):
    (tmp_path / "img" / "sub").mkdir(parents=True)
    (tmp_path / "ann" / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "img" / "sub" / "a.png")
    lab = np.array([[0, 1, 2, 255, 1, 0]] * 5, np.uint8)
    Image.fromarray(lab).save(tmp_path / "ann" / "sub" / "a_label.png")
    ds = SemanticSegDataset(tmp_path / "img", tmp_path / "ann", ["x", "y", "z"], img_suffix=".png",
                            seg_map_suffix="_label.png")
    np.testing.assert_array_equal(ds[0]["sem_seg"], lab.astype(np.int64))
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "img" / "b.png")
    with pytest.raises(SemanticDataError, match=r"b.png: no label .*b_label.png"):
        SemanticSegDataset(tmp_path / "img", tmp_path / "ann", ["x"], img_suffix=".png", seg_map_suffix="_label.png")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "ann" / "b_label.png")  # RGB label
    ds = SemanticSegDataset(tmp_path / "img", tmp_path / "ann", ["x"], img_suffix=".png", seg_map_suffix="_label.png")
    with pytest.raises(SemanticDataError, match=r"b_label.png: label PNG has mode RGB"):
        ds[0]
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "ann" / "b_label.png")
    with pytest.raises(SemanticDataError, match=r"b_label.png: label is 6x4, image b.png is 6x5"):
        ds[0]


def test_training_pipeline(tmp_path):
    raw = np.repeat(np.arange(1, 61, dtype=np.uint8).reshape(6, 10), 10, axis=0).repeat(8, axis=1)
    _write_ade(tmp_path, [raw])  # 60x80 image
    t = build_semantic_transforms(crop_size=(32, 32), scale=(128, 32))
    ds = ADE20KSemanticDataset(tmp_path, transforms=t, seed=3)
    a, b = ds[0], ds[0]
    np.testing.assert_array_equal(a["image"], b["image"])  # reproducible from the seed
    assert a["image"].shape == (32, 32, 3) and a["sem_seg"].shape == (32, 32)
    vh, vw = a["valid_size"]
    assert (a["sem_seg"][vh:] == 255).all() and (a["sem_seg"][:, vw:] == 255).all()
    assert (a["image"][vh:] == 0).all()
    inside = a["sem_seg"][:vh, :vw]
    assert set(np.unique(inside)) <= set(range(60))
    labels, cnt = np.unique(inside, return_counts=True)
    assert len(cnt) > 1 and cnt.max() / cnt.sum() < 0.75
    with pytest.raises(ValueError, match="cannot pad 40x32 to smaller 32x32"):
        PadSemantic((32, 32))({"image": np.zeros((40, 32, 3), np.uint8)})
