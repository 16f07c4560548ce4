"""Shared test fixtures: paths to the real sample data in ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KMAX_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
COCO_SAMPLE = SHARED_DATA / "coco_panoptic_panopticapi_sample"
PQ_TESTDATA = SHARED_DATA / "pq_gt_pred_deeplab_testdata"
CITYSCAPES_SAMPLE = SHARED_DATA / "cityscapes_panoptic_format_deeplab2_dummy"
CHECKPOINT_LAYOUTS = SHARED / "specs" / "checkpoint_layouts"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"test data {path} is missing: the repo expects ../shared beside it")
    return path


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    return _require(COCO_SAMPLE)


@pytest.fixture(scope="session")
def pq_testdata() -> Path:
    return _require(PQ_TESTDATA)


@pytest.fixture(scope="session")
def cityscapes_sample() -> Path:
    return _require(CITYSCAPES_SAMPLE)


@pytest.fixture(scope="session")
def checkpoint_layouts() -> Path:
    return _require(CHECKPOINT_LAYOUTS)
