"""Shared test fixtures: paths to the real sample data committed in ``tests/data``.

Everything a test reads lives inside the repository (``tests/data/SOURCES.md`` gives each
file's source, commit and licence), so the suite runs from a plain clone with nothing beside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
COCO_SAMPLE = TEST_DATA / "coco_panoptic_panopticapi_sample"
PQ_TESTDATA = TEST_DATA / "pq_gt_pred_deeplab_testdata"
CITYSCAPES_SAMPLE = TEST_DATA / "cityscapes_panoptic_format_deeplab2_dummy"
#: The three real panoptic sample sets (COCO, DeepLab PQ test data, Cityscapes).
SAMPLE_SETS = (COCO_SAMPLE, PQ_TESTDATA, CITYSCAPES_SAMPLE)
CHECKPOINT_LAYOUTS = TEST_DATA / "checkpoint_layouts"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"test data {path} is missing: it is committed under tests/data "
                                "(see tests/data/SOURCES.md); is the checkout complete?")
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
