"""Collation, reproducible loading, and the training transform on the real COCO sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
from kmax_deeplab.data.loader import build_dataloader, collate_panoptic
from kmax_deeplab.data.synthetic import write_synthetic_dataset
from kmax_deeplab.data.transforms import PAD_VALUE, LargeScaleJitter, ResizeLongestAndPad, count_valid_stride4


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn_loader")
    write_synthetic_dataset(root, num_train=8, num_val=0, image_size=48, seed=1)
    return root


def make(root, transforms=None, seed=None):
    return COCOPanopticDataset(root / "train/images", root / "train/panoptic.json", root / "train/panoptic",
                               get_dataset_meta("synthetic"), transforms=transforms, seed=seed)


def test_collate_stacks_images_and_keeps_targets(syn):
    ds = make(syn)
    batch = collate_panoptic([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 48, 48) and len(batch["targets"]) == 2
    assert "image" not in batch["targets"][0] and torch.equal(batch["targets"][1]["masks"], ds[1]["masks"])
    with pytest.raises(ValueError, match="different sizes"):
        collate_panoptic([ds[0], make(syn, ResizeLongestAndPad((33, 33)))[1]])


def test_loader_is_reproducible_with_workers(syn):
    ds = make(syn, LargeScaleJitter((33, 33), 0.5, 1.5, min_valid_pixels=0))

    def run(seed, workers):
        return [b["images"] for b in build_dataloader(ds, batch_size=4, num_workers=workers, seed=seed)]

    a, b, c = run(7, 2), run(7, 2), run(8, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_seeded_dataset_depends_on_seed_epoch_index_only(syn):
    ds = make(syn, LargeScaleJitter((33, 33), 0.5, 1.5, min_valid_pixels=0), seed=5)
    a = ds[3]["image"]
    torch.manual_seed(123)
    assert torch.equal(ds[3]["image"], a)
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["image"], a)


def test_training_transform_on_coco_sample(coco_sample):
    sd = coco_sample / "sample_data"
    t = LargeScaleJitter((257, 257), 0.2, 2.0, min_valid_pixels=256, max_tries=50)
    ds = COCOPanopticDataset(sd / "input_images", sd / "panoptic_examples.json", sd / "panoptic_examples",
                             get_dataset_meta("coco"), transforms=t, seed=0)
    batch = collate_panoptic([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 257, 257)
    for img, tgt in zip(batch["images"], batch["targets"]):
        vh, vw = tgt["valid_size"]
        assert torch.all(img[:, vh:] == PAD_VALUE) and torch.all(img[:, :, vw:] == PAD_VALUE)
        assert bool(tgt["void"][vh:].all()) and bool(tgt["void"][:, vw:].all())
        # stride-4 check of the re-sampling rule on the produced target
        assert int((~tgt["void"][::4, ::4]).sum()) > 256 and len(tgt["labels"]) > 0
