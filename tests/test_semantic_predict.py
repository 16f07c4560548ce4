"""``kmax predict --task semantic``: label PNGs with the dataset palette, overlays, the journalled
folder loop, and the round trip into ``kmax evaluate --task semantic``; semantic targets derived
from panoptic ground truth (``data/panoptic_semantic.py``).

The model is the K-Net semantic family's FCN preset shrunk to a tiny ResNetV1c (random weights
seeded and saved as a native folder, so the command and the test load the same model), with
the COCO-panoptic classes so its predictions can be scored against the bundled COCO sample.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kmax_deeplab import cli
from kmax_deeplab.checkpoints.native import save_native
from kmax_deeplab.config import apply_overrides, load_config
from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
from kmax_deeplab.data.semantic import build_semantic_transforms
from kmax_deeplab.data.panoptic_semantic import (PanopticSemanticDataset, iter_semantic_labels,
                                                 panoptic_to_train_ids, prediction_stem)
from kmax_deeplab.engine.predictor import Predictor
from kmax_deeplab.engine.semantic_inference import SemanticTestConfig, semantic_inference
from kmax_deeplab.engine.semantic_writer import (SemanticPredictionWriter, dataset_label_ids, label_palette,
                                                 write_label_png)
from kmax_deeplab.evaluation.semantic import SemSegAccumulator
from kmax_deeplab.modeling.families import family_of

GOLDEN = Path(__file__).parent / "data" / "semantic" / "mmseg_semantic_inference.npz"
PRESET = "ade20k/knet_r50_d8_fcn_512"
TINY = ["model.backbone=resnet_tiny", "model.head_channels=32", "model.updator_dim=16", "model.ffn_dim=32",
        "model.num_heads=2", "model.aux_channels=16", "model.norm=BN", "model.num_classes=133",
        "model.num_queries=133", "data.dataset=coco", "model.image_size=[96,128]",
        "postprocess.mode=slide", "postprocess.crop_size=[48,64]", "postprocess.stride=[40,48]"]


@pytest.fixture
def tiny_model(tmp_path):
    """A native folder holding the tiny semantic K-Net with seeded random weights."""
    cfg = load_config(PRESET, TINY)
    torch.manual_seed(0)
    model = family_of(cfg).build_model(cfg)
    with torch.no_grad():  # non-trivial BN statistics and a visible class signal
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif "conv_seg.weight" in name:
                t.normal_(0, 0.5)
    folder = tmp_path / "tiny_knet_semantic"
    save_native(folder, model.state_dict(), cfg)
    return folder


# ------------------------------------------------------------------ label PNGs and overlays
def test_label_png_palette_and_ids(tmp_path):
    ade = get_dataset_meta("ade20k")
    mmseg_palette = np.load(GOLDEN)["ade20k_palette"]  # mmseg 0.30 ADE20KDataset.PALETTE
    pal = np.asarray(label_palette(ade), np.uint8).reshape(256, 3)
    np.testing.assert_array_equal(pal[:150], mmseg_palette)
    assert (pal[150:] == 0).all()
    np.testing.assert_array_equal(np.asarray(label_palette(ade, "dataset"), np.uint8).reshape(256, 3)[1:151],
                                  mmseg_palette)
    np.testing.assert_array_equal(dataset_label_ids(ade)[:3], [1, 2, 3])  # reduce_zero_label: t + 1
    city = get_dataset_meta("cityscapes")
    assert dataset_label_ids(city)[:3].tolist() == [7, 8, 11]  # road, sidewalk, building label ids
    from cityscapesscripts.helpers.labels import trainId2label  # the official colours, by train id

    city_pal = np.asarray(label_palette(city), np.uint8).reshape(256, 3)
    assert [tuple(c) for c in city_pal[:19]] == [trainId2label[t].color for t in range(19)]
    city_ids = np.asarray(label_palette(city, "dataset"), np.uint8).reshape(256, 3)
    assert [tuple(city_ids[trainId2label[t].id]) for t in range(19)] == [trainId2label[t].color for t in range(19)]
    assert dataset_label_ids(get_dataset_meta("coco"))[:2].tolist() == [1, 2]

    coco = get_dataset_meta("coco")  # panopticapi's category colours, at train id / category id
    official = json.loads((Path(__file__).parent / "data" / "coco_panoptic_panopticapi_sample" /
                           "panoptic_coco_categories.json").read_text())
    coco_pal = np.asarray(label_palette(coco), np.uint8).reshape(256, 3)
    coco_ids = np.asarray(label_palette(coco, "dataset"), np.uint8).reshape(256, 3)
    assert [tuple(c) for c in coco_pal[:133]] == [tuple(c["color"]) for c in official]
    assert all(tuple(coco_ids[c["id"]]) == tuple(c["color"]) for c in official)

    label = np.array([[0, 1, 149], [255, 2, 0]])
    write_label_png(tmp_path / "a.png", label, label_palette(ade))
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im), label)
        assert im.convert("RGB").getpixel((2, 0)) == tuple(mmseg_palette[149])
    with pytest.raises(ValueError, match="0..255"):
        write_label_png(tmp_path / "b.png", np.array([[256]]))
    with pytest.raises(ValueError, match="label-ids"):
        label_palette(ade, "raw")


def test_writer_files_and_overlay(tmp_path):
    ade = get_dataset_meta("ade20k")
    img = np.full((60, 120, 3), 100, np.uint8)
    sem = np.zeros((60, 120), np.int64)
    sem[:, 60:] = 2  # wall | sky
    writer = SemanticPredictionWriter(tmp_path, ade, label_ids="dataset")
    stem = writer.add(tmp_path / "x.jpg", img, {"semantic": sem})
    assert stem == "x" and writer.add(tmp_path / "x.png", img, {"semantic": sem}) == "x_1"
    with Image.open(tmp_path / "x.png") as im:
        np.testing.assert_array_equal(np.array(im), sem + 1)  # ADE20K dataset ids
    assert writer.annotations[0]["classes"] == [
        {"train_id": 0, "label": 1, "name": "wall", "area": 3600},
        {"train_id": 2, "label": 3, "name": "sky", "area": 3600}]
    with Image.open(tmp_path / "x_overlay.jpg") as ov:
        rgb = np.asarray(ov.convert("RGB"), np.float64)
    # half image, half class colour (JPEG-compressed: within a few levels), away from the text label
    sky = np.array(ade.categories[2]["color"]) * 0.5 + 50
    assert np.abs(rgb[2, 117] - sky).max() <= 12
    wall = np.array(ade.categories[0]["color"]) * 0.5 + 50
    assert np.abs(rgb[57, 2] - wall).max() <= 12
    with pytest.raises(ValueError, match="outside"):
        writer.add(tmp_path / "y.jpg", img, {"semantic": sem + 200})


# ------------------------------------------------------------------ semantic targets from panoptic
def test_panoptic_to_train_ids_hand_case():
    ids = np.array([[0, 5, 5, 9], [7, 7, 9, 9], [3, 0, 0, 5]])
    segments = [{"id": 5, "train_id": 4, "iscrowd": 0}, {"id": 7, "train_id": 0, "iscrowd": 1},
                {"id": 9, "train_id": 12, "iscrowd": 0}]  # id 3 is not listed: void
    expected = np.array([[255, 4, 4, 12], [0, 0, 12, 12], [255, 255, 255, 4]])
    np.testing.assert_array_equal(panoptic_to_train_ids(ids, segments), expected)
    expected[1, :2] = 255
    np.testing.assert_array_equal(panoptic_to_train_ids(ids, segments, crowd="ignore"), expected)
    with pytest.raises(ValueError, match="crowd"):
        panoptic_to_train_ids(ids, segments, crowd="drop")


def test_semantic_targets_of_the_coco_sample(coco_sample):
    """Per class, the label map's pixel count is the sum of the JSON's own segment areas (the
    sample's panoptic JSON), void is the rest; crowd pixels keep their class or become 255."""
    sample = coco_sample / "sample_data"
    meta = get_dataset_meta("coco")
    pan = COCOPanopticDataset(sample / "input_images", sample / "panoptic_examples.json",
                              sample / "panoptic_examples", meta)
    data = json.loads((sample / "panoptic_examples.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    ds = PanopticSemanticDataset(pan)
    labels = dict(iter_semantic_labels(pan))
    crowd_labels = dict(iter_semantic_labels(pan, crowd="ignore"))
    assert len(ds) == 2 and sorted(labels) == ["000000142238", "000000439180"]
    for i, ann in enumerate(data["annotations"]):
        rec = ds[i]
        im = images[ann["image_id"]]
        assert rec["image"].shape == (im["height"], im["width"], 3) and rec["sem_seg"].dtype == np.int64
        stem = prediction_stem(im["file_name"])
        np.testing.assert_array_equal(rec["sem_seg"], labels[stem])
        for rule, label in (("class", labels[stem]), ("ignore", crowd_labels[stem])):
            expected = np.zeros(256, np.int64)
            for s in ann["segments_info"]:
                if rule == "ignore" and s["iscrowd"]:
                    continue
                expected[meta.category_id_to_train_id[s["category_id"]]] += s["area"]
            expected[255] = im["height"] * im["width"] - expected[:255].sum()
            np.testing.assert_array_equal(np.bincount(label.ravel(), minlength=256), expected)
    assert prediction_stem("frankfurt_000000_000294_gtFine_leftImg8bit.png") == "frankfurt_000000_000294_leftImg8bit"
    # training use: mmseg's ADE20K pipeline (small scale) on the derived targets
    train = PanopticSemanticDataset(pan, transforms=build_semantic_transforms(crop_size=(64, 96), scale=(256, 96)),
                                    seed=3)
    rec = train[0]
    assert rec["image"].shape == (64, 96, 3) and rec["sem_seg"].shape == (64, 96)
    assert set(np.unique(rec["sem_seg"]).tolist()) <= set(np.unique(labels["000000142238"]).tolist()) | {255}
    assert np.array_equal(train[0]["sem_seg"], rec["sem_seg"])  # seeded per (seed, epoch, index)


def test_semantic_targets_of_the_cityscapes_sample(cityscapes_sample):
    """The Cityscapes-panoptic sample (createPanopticImgs --use-train-id layout, a crowd car):
    class pixel counts are the JSON's segment areas; the prediction stem is the image's."""
    pan = COCOPanopticDataset(cityscapes_sample / "leftImg8bit",
                              cityscapes_sample / "gtFine" / "cityscapes_panoptic_dummy_trainId.json",
                              cityscapes_sample / "gtFine" / "cityscapes_panoptic_dummy_trainId",
                              get_dataset_meta("cityscapes"))
    ann = json.loads((cityscapes_sample / "gtFine" / "cityscapes_panoptic_dummy_trainId.json").read_text())
    ann = ann["annotations"][0]
    (stem, label), = list(iter_semantic_labels(pan))
    assert stem == "dummy_000000_000000_leftImg8bit" and (pan.image_dir / f"{stem}.png").is_file()
    for crowd in ("class", "ignore"):
        label = dict(iter_semantic_labels(pan, crowd=crowd))[stem]
        expected = np.zeros(256, np.int64)
        for seg in ann["segments_info"]:  # category_id is the train id here
            if not (crowd == "ignore" and seg["iscrowd"]):
                expected[seg["category_id"]] += seg["area"]
        expected[255] = label.size - expected[:255].sum()
        np.testing.assert_array_equal(np.bincount(label.ravel(), minlength=256), expected)
    np.testing.assert_array_equal(PanopticSemanticDataset(pan)[0]["sem_seg"], dict(iter_semantic_labels(pan))[stem])


def test_evaluate_semantic_against_panoptic_gt(tmp_path, coco_sample, capsys):
    """Predictions equal to the derived maps score 1; a crowd-blind prediction scores 1 only with
    --crowd ignore; a missing prediction is one error line."""
    sample = coco_sample / "sample_data"
    pan = COCOPanopticDataset(sample / "input_images", sample / "panoptic_examples.json",
                              sample / "panoptic_examples", get_dataset_meta("coco"))
    args = ["evaluate", "--task", "semantic", "--gt-json", str(sample / "panoptic_examples.json"),
            "--gt-folder", str(sample / "panoptic_examples"), "--dataset", "coco"]
    for name, crowd in (("exact", "class"), ("blind", "ignore")):
        (tmp_path / name).mkdir()
        for stem, label in iter_semantic_labels(pan, crowd=crowd):
            write_label_png(tmp_path / name / f"{stem}.png", label)
    results = {}
    for name in ("exact", "blind"):
        for crowd in ("class", "ignore"):
            out = tmp_path / f"{name}_{crowd}.json"
            assert cli.main(args + ["--pred-folder", str(tmp_path / name), "--crowd", crowd, "--output", str(out)]) == 0
            results[name, crowd] = json.loads(out.read_text())["semantic"]
    assert results["exact", "class"]["mIoU"] == 1.0 and results["exact", "class"]["aAcc"] == 1.0
    assert results["blind", "ignore"]["mIoU"] == 1.0
    assert results["blind", "class"]["mIoU"] < 1.0 and results["blind", "class"]["aAcc"] < 1.0
    (tmp_path / "exact" / "000000439180.png").unlink()
    capsys.readouterr()
    assert cli.main(args + ["--pred-folder", str(tmp_path / "exact")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "000000439180.png" in err[0]


# ------------------------------------------------------------------ predictor and command
@pytest.mark.slow
def test_predictor_semantic_is_semantic_inference(tiny_model):
    pred = Predictor.from_pretrained(tiny_model, channels_last=False)
    cfg = pred.cfg
    test = pred.semantic_test
    assert (test.mode, test.crop_size, test.stride, test.img_scale) == ("slide", (48, 64), (40, 48), (96, 128))
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    out = pred.predict_semantic(img, probabilities=True)
    with torch.inference_mode():
        ref = semantic_inference(lambda x: pred.model(x)["sem_seg"], img, test)
    torch.testing.assert_close(out["probabilities"], ref)
    np.testing.assert_array_equal(out["semantic"], ref.argmax(0).numpy())
    assert out["semantic"].shape == (50, 70) and len(np.unique(out["semantic"])) > 1
    # whole-image mode with flip through config overrides gives that result
    whole = Predictor(pred.model, apply_overrides(cfg, ["postprocess.mode=whole", "postprocess.flip=true"]),
                      channels_last=False)
    with torch.inference_mode():
        ref_whole = semantic_inference(lambda x: pred.model(x)["sem_seg"], img,
                                       SemanticTestConfig(img_scale=(96, 128), flip=True))
    np.testing.assert_array_equal(whole(img)["semantic"], ref_whole.argmax(0).numpy())
    with pytest.raises(ValueError, match="semantic model"):
        Predictor(pred.model, load_config("synthetic/kmax_tiny")).predict_semantic(img)


@pytest.mark.slow
def test_predict_semantic_on_the_real_photos_then_evaluate(tiny_model, tmp_path, coco_sample, capsys):
    sample = coco_sample / "sample_data"
    inputs = tmp_path / "in"
    shutil.copytree(sample / "input_images", inputs)
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    out = tmp_path / "out"
    code = cli.main(["predict", str(inputs), "--output", str(out), "--model", str(tiny_model), "--task", "semantic",
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "corrupt.jpg" in err
    meta = get_dataset_meta("coco")
    pal = np.asarray(label_palette(meta), np.uint8).reshape(256, 3)
    pred = Predictor.from_pretrained(tiny_model)
    gt = COCOPanopticDataset(sample / "input_images", sample / "panoptic_examples.json",
                             sample / "panoptic_examples", meta)
    acc = SemSegAccumulator(133)
    predicted = {}
    for stem, label in iter_semantic_labels(gt):
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode == "P"
            np.testing.assert_array_equal(np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)[:133], pal[:133])
            written = np.array(im)
        expected = predicted[stem] = pred(str(inputs / f"{stem}.jpg"))["semantic"]
        np.testing.assert_array_equal(written, expected)
        with Image.open(out / f"{stem}_overlay.jpg") as ov:
            assert ov.size == (label.shape[1], label.shape[0])
        acc.update(written, label.astype(np.int64))
    # in-training validation: the same inference and metric, from the dataset adapter
    from kmax_deeplab.engine.distributed import DistInfo
    from kmax_deeplab.engine.validation import SemanticValidation

    validate = SemanticValidation(pred.cfg, PanopticSemanticDataset(gt))
    pred.model.train()
    scores = validate(pred.model, DistInfo())
    assert pred.model.training  # restored
    pred.model.eval()
    ref_metrics = acc.compute()
    assert scores == {k: pytest.approx(100 * ref_metrics[k], abs=1e-9) for k in ("mIoU", "mAcc", "aAcc")}
    listing = json.loads((out / "predictions.json").read_text())
    assert sorted(a["file_name"] for a in listing["annotations"]) == ["000000142238.png", "000000439180.png"]

    # kmax evaluate --task semantic reads the PNGs against the panoptic GT's semantic maps
    res_path = tmp_path / "miou.json"
    code = cli.main(["evaluate", "--task", "semantic", "--gt-json", str(sample / "panoptic_examples.json"),
                     "--gt-folder", str(sample / "panoptic_examples"), "--pred-folder", str(out),
                     "--dataset", "coco", "--output", str(res_path)])
    assert code == 0
    res = json.loads(res_path.read_text())["semantic"]
    ref = acc.compute()
    assert res["num_images"] == 2
    assert res["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-12) and res["aAcc"] == pytest.approx(ref["aAcc"])
    # and as plain label-PNG folders (GT label PNGs written from the panoptic sample)
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for stem, label in iter_semantic_labels(gt):
        write_label_png(gt_dir / f"{stem}.png", label)
    code = cli.main(["evaluate", "--task", "semantic", "--gt-folder", str(gt_dir), "--pred-folder", str(out),
                     "--num-classes", "133", "--output", str(res_path)])
    assert code == 0 and json.loads(res_path.read_text())["semantic"]["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-12)

    # --label-ids dataset: the COCO category ids of the same prediction
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(inputs / "000000439180.jpg", one)
    assert cli.main(["predict", str(one), "--output", str(tmp_path / "ids"), "--model", str(tiny_model), "--task",
                     "semantic", "--label-ids", "dataset", "--no-overlay", "--quiet"]) == 0
    with Image.open(tmp_path / "ids" / "000000439180.png") as im:
        np.testing.assert_array_equal(np.array(im), dataset_label_ids(meta)[predicted["000000439180"]])
    assert not (tmp_path / "ids" / "000000439180_overlay.jpg").exists()

    # resume: nothing left to do, the files stay; a panoptic task on a semantic model is refused
    (inputs / "corrupt.jpg").unlink()
    assert cli.main(["predict", str(inputs), "--output", str(out), "--model", str(tiny_model), "--task",
                     "semantic", "--quiet", "--resume"]) == 0
    assert cli.main(["predict", str(inputs), "--output", str(tmp_path / "o2"), "--model", str(tiny_model),
                     "--quiet"]) == 2
    assert "use --task semantic" in capsys.readouterr().err
    assert cli.main(["predict", str(inputs), "--output", str(tmp_path / "o3"), "--config", "synthetic/kmax_tiny",
                     "--task", "semantic", "--quiet"]) == 2
    assert "needs a semantic model" in capsys.readouterr().err
    assert cli.main(["predict", str(inputs), "--output", str(tmp_path / "o4"), "--model", str(tiny_model),
                     "--task", "semantic", "--save-format", "npz", "--quiet"]) == 2
    assert "--save-format=npz" in capsys.readouterr().err
