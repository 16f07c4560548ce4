"""Data-loading throughput (images/s) at a training crop, per DataLoader worker count.

Measures ``COCOPanopticDataset`` + transform + ``collate_panoptic`` on the COCO sample (real
640x4xx photos, 1281 crop, BD scale range 0.2-2.0) and on synthetic data (128x128, 129 crop,
as in ``synthetic/kmax_tiny``). Transforms: ``LSJ`` = geometry only (``LargeScaleJitter``);
``BD recipe`` = ``build_transforms`` with colour jitter and copy-paste (the DataConfig
defaults). Plain script; prints a Markdown table.

    PYTHONPATH=src python benchmarks/bench_data.py [--images 32] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from kmax_deeplab.data.catalog import get_dataset_meta
from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
from kmax_deeplab.data.loader import build_dataloader
from kmax_deeplab.data.synthetic import write_synthetic_dataset
from kmax_deeplab.data.transforms import LargeScaleJitter, build_transforms

TEST_DATA = Path(__file__).resolve().parents[1] / "tests" / "data"  # committed samples, see SOURCES.md


class Repeat(torch.utils.data.Dataset):
    """Repeat a small dataset ``n`` times (the COCO sample has 2 images)."""

    def __init__(self, ds, n):
        self.ds, self.n = ds, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.ds[i % len(self.ds)]


def throughput(ds, workers: int, batch: int) -> float:
    loader = build_dataloader(ds, batch_size=batch, num_workers=workers, seed=0, drop_last=False,
                              persistent_workers=False)
    t = time.perf_counter()
    n = sum(b["images"].shape[0] for b in loader)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="images per measurement")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    sd = TEST_DATA / "coco_panoptic_panopticapi_sample" / "sample_data"

    def bd(crop, lo, hi, valid):
        return build_transforms(SimpleNamespace(crop_size=crop, min_scale=lo, max_scale=hi, flip=True,
                                                min_valid_pixels=valid, color_jitter=True, copy_paste=True), True)

    def coco(t):
        return COCOPanopticDataset(sd / "input_images", sd / "panoptic_examples.json", sd / "panoptic_examples",
                                   get_dataset_meta("coco"), transforms=t)

    tmp = tempfile.TemporaryDirectory()
    t0 = time.perf_counter()
    write_synthetic_dataset(tmp.name, args.images, 0, image_size=128, seed=0)
    gen = args.images / (time.perf_counter() - t0)
    root = Path(tmp.name)

    def syn(t):
        return COCOPanopticDataset(root / "train/images", root / "train/panoptic.json", root / "train/panoptic",
                                   get_dataset_meta("synthetic"), transforms=t)

    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"synthetic generation (128x128, write JPEG+PNG): {gen:.0f} images/s")
    print("| data | crop | transform | workers | images/s |\n|---|---|---|---|---|")
    cases = (("COCO sample", "LSJ", Repeat(coco(LargeScaleJitter((1281, 1281), 0.2, 2.0)), args.images), 1281, 2),
             ("COCO sample", "BD recipe", Repeat(coco(bd((1281, 1281), 0.2, 2.0, 4096)), args.images), 1281, 2),
             ("synthetic", "LSJ", syn(LargeScaleJitter((129, 129), 0.5, 1.5, min_valid_pixels=64)), 129, 8),
             ("synthetic", "BD recipe", syn(bd((129, 129), 0.5, 1.5, 64)), 129, 8))
    for name, tname, ds, crop, batch in cases:
        for w in args.workers:
            print(f"| {name} | {crop} | {tname} | {w} | {throughput(ds, w, batch):.1f} |", flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
