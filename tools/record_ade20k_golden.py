"""Record Mask2Former's ADE20K panoptic + semantic conversion of the test fixture.

Runs facebookresearch/Mask2Former's own ``datasets/prepare_ade20k_pan_seg.py`` and
``datasets/prepare_ade20k_sem_seg.py`` (from a checkout given with ``--mask2former``;
needs numpy, Pillow, tqdm and panopticapi's ``utils.IdGenerator``) on the raw ADE20K
fixture that ``tests/prepare_fixtures.make_ade20k_raw`` builds from the committed COCO
sample, and writes ``tests/data/prepare/ade20k_mask2former_golden.json``: per image the
segments in a form independent of Mask2Former's random segment ids (category, area,
bbox, iscrowd, the COCO RLE of the segment's pixels), and the SHA-256 of each
``annotations_detectron2`` map. ``tests/test_prepare_ade20k_coco.py`` compares
``kmax prepare ade20k`` with it.

    python tools/record_ade20k_golden.py --mask2former /path/to/Mask2Former [--commit SHA]

Recorded with Mask2Former commit 9b0651c6c1d5b3af2e6da0589b719c514ec0d69a.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))


def canonical_segments(pan_png: Path, segments_info: list[dict]) -> list[dict]:
    """Segments keyed by their pixels (COCO RLE), sorted: ids do not matter."""
    from pycocotools import mask as mask_utils

    a = np.asarray(Image.open(pan_png).convert("RGB"), dtype=np.int64)
    ids = a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]
    out = []
    for s in segments_info:
        rle = mask_utils.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)[:, :, None]))[0]
        out.append({"category_id": int(s["category_id"]), "area": int(s["area"]), "bbox": list(s["bbox"]),
                    "iscrowd": int(s["iscrowd"]), "rle": rle["counts"].decode("ascii")})
    return sorted(out, key=lambda s: (s["category_id"], s["rle"]))


def array_sha256(path: Path) -> str:
    a = np.asarray(Image.open(path))
    return hashlib.sha256(a.tobytes() + str(a.shape).encode() + str(a.dtype).encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mask2former", required=True, help="a Mask2Former checkout (with datasets/)")
    ap.add_argument("--commit", default=None, help="Mask2Former commit, when --mask2former is no git checkout")
    ap.add_argument("--out", default=str(REPO / "tests" / "data" / "prepare" / "ade20k_mask2former_golden.json"))
    args = ap.parse_args()
    from prepare_fixtures import make_ade20k_raw

    m2f = Path(args.mask2former).resolve()
    commit = subprocess.run(["git", "-C", str(m2f), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or args.commit or "unknown"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_ade20k_raw(tmp, REPO / "tests" / "data" / "coco_panoptic_panopticapi_sample")
        env = dict(os.environ, DETECTRON2_DATASETS=str(tmp))
        for script in ("prepare_ade20k_pan_seg.py", "prepare_ade20k_sem_seg.py"):
            subprocess.run([sys.executable, f"datasets/{script}"], cwd=m2f, env=env, check=True)
        base = tmp / "ADEChallengeData2016"
        golden = {"source": f"facebookresearch/Mask2Former@{commit} datasets/prepare_ade20k_pan_seg.py, "
                            f"prepare_ade20k_sem_seg.py on tests/prepare_fixtures.make_ade20k_raw",
                  "panoptic": {}, "semantic_sha256": {}}
        for split, d in (("train", "training"), ("val", "validation")):
            data = json.loads((base / f"ade20k_panoptic_{split}.json").read_text())
            golden["categories_" + split] = [[c["id"], c["name"], c["isthing"]] for c in data["categories"]]
            for img, ann in zip(data["images"], data["annotations"]):
                golden["panoptic"][ann["image_id"]] = {
                    "image": {k: img[k] for k in ("id", "file_name", "width", "height")},
                    "file_name": ann["file_name"],
                    "segments": canonical_segments(base / f"ade20k_panoptic_{split}" / ann["file_name"],
                                                   ann["segments_info"])}
            for png in sorted((base / "annotations_detectron2" / d).glob("*.png")):
                golden["semantic_sha256"][png.stem] = array_sha256(png)
    Path(args.out).write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
