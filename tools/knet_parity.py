"""Regenerate the K-Net parity fixtures in ``tests/data/parity/knet/`` from the original code.

What it does (nothing here runs at test time; the tests only read the fixtures):

1. builds our K-Net R-50 (``tests/knet_test_utils.seeded_knet``: seed 0, randomised biases,
   norms and BN statistics) and writes it in the original layout with
   ``kmax_deeplab.checkpoints.mmdet.save_mmdet`` (``{"state_dict", "meta"}``, like the released
   ``.pth`` files);
2. checks ``kmax convert --from mmdet``'s table reads that file back strictly and unchanged;
3. runs the ORIGINAL K-Net on it (ZwwWayne/K-Net @5e50ee5 with mmdet 2.28.2, mmcv 1.7.2 without
   compiled ops; knet.md §13) through ``REF_DIR/run_ref.py`` in ``REF_PYTHON``, on a real COCO
   photo resized to 62×93 (canvas 64×96), with the panoptic GT of that photo for the losses;
4. compares our outputs with the reference's on the FULL tensors and prints the errors;
5. stores subsampled reference tensors + float64 checksums + the panoptic/instance results +
   the loss values (``panoptic.npz``, ``instance.npz``) and ``meta.json``.

usage (from the repository root, with the project venv):
    PYTHONPATH=src python tools/knet_parity.py --ref-dir /work/refs/knet \
        --ref-python /work/refs/venv-knet/bin/python [--out tests/data/parity/knet]

The reference environment (outside the repository): a venv with torch 2.13.0, numpy<2,
setuptools<70, ``mmcv==1.7.2`` and ``mmdet==2.28.2`` (``--no-deps --no-build-isolation``), a
``torchvision`` stand-in holding only ``__version__``, a ``mmcv._ext`` stand-in whose ops raise,
and K-Net's classes re-registered over mmdet's clashing names (see run_ref.py / knet_env.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from knet_test_utils import checksums, postprocess_case, seeded_knet, subsample  # noqa: E402

from kmax_deeplab.checkpoints.mmdet import load_mmdet_checkpoint, save_mmdet  # noqa: E402
from kmax_deeplab.modeling.knet.postprocess import knet_panoptic_inference  # noqa: E402

PHOTO = REPO / "src/kmax_deeplab/assets/coco_sample/000000142238.jpg"
IMAGE_SIZE = (62, 93)  # resized photo (H, W); canvas 64 x 96
ORI_SHAPE = (85, 128)  # output size of the panoptic / instance results
REF_COMMIT = "ZwwWayne/K-Net@5e50ee5"


def panoptic_gt(photo_gt_png: Path, segments_json: Path, categories_json: Path, size: tuple[int, int]):
    """Things (non-crowd) masks, contiguous labels and the 0..132/255 semantic map at ``size``."""
    cats = sorted(json.load(open(categories_json)), key=lambda c: (not c["isthing"], c["id"]))
    label = {c["id"]: i for i, c in enumerate(cats)}
    ann = next(a for a in json.load(open(segments_json))["annotations"] if a["file_name"] == photo_gt_png.name)
    rgb = np.asarray(Image.open(photo_gt_png).convert("RGB").resize(size[::-1], Image.NEAREST)).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    sem = np.full(size, 255, np.uint8)
    masks, labels = [], []
    for s in ann["segments_info"]:
        m = ids == s["id"]
        sem[m] = label[s["category_id"]]
        if label[s["category_id"]] < 80 and not s["iscrowd"] and m.any():
            masks.append(m), labels.append(label[s["category_id"]])
    return np.stack(masks).astype(np.uint8), np.array(labels, np.int64), sem


def ours(model, image: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        out = model(x)
    res = {"head_masks": out["init_all_masks"], "head_semantic": out["semantic_logits"]}
    for s, o in enumerate(out["aux_outputs"] + [out]):
        res[f"s{s}_cls"], res[f"s{s}_masks"] = o["pred_logits"], o["pred_masks"]
    res = {k: v.numpy() for k, v in res.items()}
    res["_out"] = out
    return res


def up2(x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(x)
    return torch.nn.functional.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-dir", default="/work/refs/knet")
    ap.add_argument("--ref-python", default="/work/refs/venv-knet/bin/python")
    ap.add_argument("--gt-dir", default=str(REPO / "tests/data/coco_panoptic_panopticapi_sample"),
                    help="panopticapi sample (panoptic_examples.json + PNGs + categories) for the loss GT")
    ap.add_argument("--out", default=str(REPO / "tests/data/parity/knet"))
    a = ap.parse_args()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = np.asarray(Image.open(PHOTO).convert("RGB").resize(IMAGE_SIZE[::-1], Image.BILINEAR))
    gt_dir = Path(a.gt_dir)
    gt_masks, gt_labels, gt_sem = panoptic_gt(gt_dir / "sample_data/panoptic_examples" / (PHOTO.stem + ".png"),
                                              gt_dir / "sample_data/panoptic_examples.json",
                                              gt_dir / "panoptic_coco_categories.json", IMAGE_SIZE)
    meta: dict = {"reference": REF_COMMIT, "photo": PHOTO.name, "image_size": IMAGE_SIZE, "ori_shape": ORI_SHAPE,
                  "torch": torch.__version__, "seed": 0,
                  "gt": "panopticapi sample_data/panoptic_examples (CC BY 4.0 COCO), nearest-resized"}
    for task in ("panoptic", "instance"):
        model = seeded_knet(task)
        with tempfile.TemporaryDirectory() as tmp:
            pth = Path(tmp) / f"knet_{task}_seed0.pth"
            save_mmdet(model.state_dict(), pth, meta={"kmax_deeplab": "seeded test weights", "task": task})
            back = load_mmdet_checkpoint(pth, model)
            assert all(torch.equal(back[k], v) for k, v in model.state_dict().items()), "round trip changed weights"
            inp = Path(tmp) / "in.npz"
            pp_cls, pp_masks = postprocess_case(model.stages[-1].num_classes, len(model.kernel_head.init_kernels.weight)
                                                + model.num_stuff)
            np.savez(inp, image=image, ori_shape=np.array(ORI_SHAPE), gt_masks=gt_masks, gt_labels=gt_labels,
                     gt_semantic_seg=gt_sem, pp_cls=pp_cls, pp_masks=pp_masks)
            res = Path(tmp) / "out.npz"
            subprocess.run([a.ref_python, str(Path(a.ref_dir) / "run_ref.py"), "--task", task, "--pth", str(pth),
                            "--input", str(inp), "--out", str(res), "--losses"], check=True, cwd=a.ref_dir)
            ref = dict(np.load(res))
        mine = ours(model, image)
        golden: dict[str, np.ndarray] = {"image": image, "gt_masks": gt_masks, "gt_labels": gt_labels,
                                         "gt_semantic_seg": gt_sem}
        for k in ref:
            if k.startswith("pp_"):
                golden[k] = ref[k].astype(np.int32) if ref[k].dtype == np.int64 else ref[k]
        pairs = {"head_masks": up2(ref["head_masks_s8"]), "head_semantic": up2(ref["head_semantic_s8"])}
        for s in range(3):
            pairs[f"s{s}_cls"] = ref[f"s{s}_cls"]
            pairs[f"s{s}_masks"] = up2(ref[f"s{s}_masks_s8"])
        errors = {}
        for k, r in pairs.items():
            err = float(np.abs(mine[k] - r).max() / max(np.abs(r).max(), 1e-12))
            errors[k] = err
            golden[f"{k}.val"], golden[f"{k}.sum"] = subsample(r)[1], checksums(r)
            golden[f"{k}.shape"] = np.array(r.shape)
        print(task, "max |ours - ref| / max |ref|:", json.dumps(errors))
        if task == "panoptic":
            golden["pan_results"] = ref["pan_results"].astype(np.int32)
            out = mine["_out"]
            pan, segs = knet_panoptic_inference(out["pred_logits"][0], out["pred_masks"][0], num_thing_classes=80,
                                                num_kernels=100, canvas_size=out["canvas_size"],
                                                valid_size=IMAGE_SIZE, output_size=ORI_SHAPE)
            print("panoptic segments:", len(segs), "reference:", len(np.unique(ref["pan_results"])))
        else:
            for k in ("inst_labels", "inst_scores", "inst_masks"):
                golden[k] = ref[k]
        golden["loss_names"], golden["loss_values"] = ref["loss_names"], ref["loss_values"]
        golden["assigned_gt_inds"] = ref["assigned_gt_inds"].astype(np.int16)
        meta[f"{task}_max_rel_error"] = errors
        np.savez_compressed(out_dir / f"{task}.npz", **golden)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("wrote", out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
