"""Regenerate the Swin parity fixture ``tests/data/parity/swin/`` from mmdet 2.28.2's SwinTransformer.

What it does (nothing here runs at test time; the tests only read the fixture):

1. builds our Swin-T (``tests/swin_test_utils.seeded_swin``: seed 0, randomised norms, biases and
   relative position bias tables) and writes it in the OFFICIAL Swin layout
   (``{"model": ...}``, as microsoft/Swin-Transformer files) with
   ``kmax_deeplab.checkpoints.swin.ours_to_official`` plus the ``relative_position_index`` buffers;
2. runs ``REF_DIR/run_swin_ref.py`` in ``REF_PYTHON``: mmdet 2.28.2 (mmcv 1.7.2, no compiled ops)
   converts that file with its own ``swin_converter`` (K-Net's ``convert_weights=True`` path),
   loads it strictly into its ``SwinTransformer`` (embed 96, depths 2/2/6/2, heads 3/6/12/24,
   window 7, drop path 0.2) and runs a seeded 1x3x100x130 input (no side a multiple of 28);
   it also counts the parameters of mmdet's Swin-T / Swin-L and of K-Net's
   ``knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py`` (and the instance R-50 config with that
   backbone) built on CPU, and the state-dict names / shapes of that K-Net Swin-L; it runs
   ``REF_DIR/run_knet_swin_ref.py`` (the original panoptic K-Net on Swin-T dims, every stage, on a
   real photo) and ``REF_DIR/count_sem.py`` (the semantic K-Net + UPerNet Swin-T / Swin-L 640
   parameter counts and mmcv's no-decay parameter groups) and ``REF_DIR/run_sem_swin_ref.py``
   (mmseg 0.30's own K-Net + UPerNet Swin-T config, the layout of mmseg's released Swin files) and
   ``REF_DIR/mmseg_swin_layouts.py`` (state-dict names / shapes and parameter counts of mmseg's three
   K-Net Swin configs: ``mmseg_swin_layouts.json.gz``);
3. compares our outputs on the FULL stage tensors and prints the relative errors;
4. stores ``tests/swin_test_utils.summarise`` of the reference outputs (``swin_t.npz``) and
   ``meta.json`` (reference commit, errors, parameter counts) and
   ``knet_swin_l_panoptic_keys.json.gz`` (the original K-Net Swin-L's 541 state-dict entries).

usage (repository root, project venv):
    PYTHONPATH=src python tools/make_swin_parity.py --ref-python /work/refs/venv-knet/bin/python \
        [--ref-dir tools/swin_reference] [--out tests/data/parity/swin] [--knet-large]

The reference-side scripts are ``tools/swin_reference/*.py`` (ours; they import the reference code). They
need the reference venv of ``tools/knet_parity.py`` (torch 2.13.0, numpy<2, mmcv 1.7.2 and mmdet 2.28.2
without compiled ops, mmsegmentation 0.30.0), a ZwwWayne/K-Net @5e50ee5 checkout (``KNET_REPO``), and
the stand-in folders of ``tools/knet_parity.py`` (``KNET_ENV_DIR``: knet_env.py, stubs/) and
``tools/knet_semantic_parity.py`` (``KNETSEM_ENV_DIR``: knetsem_env.py).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from knet_test_utils import checksums, subsample  # noqa: E402
from swin_test_utils import (  # noqa: E402
    knet_photo,
    parity_image,
    seeded_knet_swin,
    seeded_semantic_swin,
    seeded_swin,
    semantic_image,
    summarise,
)

from kmax_deeplab.checkpoints.mmseg import load_mmseg_checkpoint, save_mmseg  # noqa: E402

from kmax_deeplab.checkpoints.mmdet import load_mmdet_checkpoint, save_mmdet  # noqa: E402
from kmax_deeplab.modeling.knet.postprocess import knet_panoptic_inference  # noqa: E402

from kmax_deeplab.checkpoints.swin import official_to_ours, ours_to_official  # noqa: E402
from kmax_deeplab.modeling.backbones.swin import relative_position_index  # noqa: E402

REF = "mmdet 2.28.2 (mmdet/models/backbones/swin.py, utils/ckpt_convert.py swin_converter); " \
      "K-Net ZwwWayne/K-Net@5e50ee5 configs; mmcv 1.7.2"


def official_state(model) -> dict[str, torch.Tensor]:
    """Our seeded model in the official layout, with the relative_position_index buffers it stores."""
    off = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ours_to_official(model.state_dict()).items()}
    for k in list(off):
        if k.endswith(".attn.relative_position_bias_table"):
            off[k.replace("relative_position_bias_table", "relative_position_index")] = relative_position_index(7)
    return off


def up2(x: np.ndarray) -> np.ndarray:
    return torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear",
                                           align_corners=False).numpy()


def knet_case(args, tmp: Path, size: str = "tiny") -> tuple[dict, dict]:
    """K-Net Swin panoptic: ours vs the original (the Swin-L config; with Swin-T dims for tiny), every stage."""
    model = seeded_knet_swin(backbone="swin_t" if size == "tiny" else "swin_l")
    save_mmdet(model.state_dict(), tmp / "knet_swin_t.pth", meta={"task": "panoptic"})
    model.load_state_dict(load_mmdet_checkpoint(tmp / "knet_swin_t.pth", model), strict=True)
    image = knet_photo()
    np.save(tmp / "photo.npy", image)
    subprocess.run([args.ref_python, str(args.ref_dir / "run_knet_swin_ref.py"), str(tmp / "knet_swin_t.pth"),
                    str(tmp / "photo.npy"), str(tmp / "knet_ref.npz"), size], check=True)
    ref = dict(np.load(tmp / "knet_ref.npz"))
    with torch.no_grad():
        out = model(torch.from_numpy(image).permute(2, 0, 1)[None])
        feats = model.backbone(model.normalize(torch.from_numpy(image).permute(2, 0, 1)[None]))
    mine = {"head_masks": out["init_all_masks"], "head_semantic": out["semantic_logits"]}
    for s, o in enumerate(out["aux_outputs"] + [out]):
        mine[f"s{s}_cls"], mine[f"s{s}_masks"] = o["pred_logits"], o["pred_masks"]
    mine.update({f"res{i}": feats[f"res{i}"] for i in range(2, 6)})
    pairs = {"head_masks": up2(ref["head_masks_s8"]), "head_semantic": up2(ref["head_semantic_s8"])}
    for s in range(3):
        pairs[f"s{s}_cls"], pairs[f"s{s}_masks"] = ref[f"s{s}_cls"], up2(ref[f"s{s}_masks_s8"])
    pairs.update({f"res{i}": ref[f"res{i}"] for i in range(2, 6)})
    golden, errors = {"pan_results": ref["pan_results"].astype(np.int32)}, {}
    for k, r in pairs.items():
        errors[k] = float(np.abs(mine[k].numpy() - r).max() / max(np.abs(r).max(), 1e-12))
        golden[f"{k}.val"], golden[f"{k}.sum"], golden[f"{k}.shape"] = subsample(r)[1], checksums(r), np.array(r.shape)
    pan, segs = knet_panoptic_inference(out["pred_logits"][0], out["pred_masks"][0], num_thing_classes=80,
                                        num_kernels=100, canvas_size=out["canvas_size"], valid_size=image.shape[:2],
                                        output_size=image.shape[:2])
    print(f"K-Net Swin ({size}) max |ours - ref| / max |ref|:", json.dumps(errors))
    print("panoptic segments:", len(segs), "reference ids:", np.unique(ref["pan_results"]).tolist())
    return golden, errors


def semantic_case(args, tmp: Path) -> tuple[dict, dict]:
    """Semantic K-Net + UPerNet Swin-T: ours vs mmseg 0.30's own K-Net Swin-T config (mmseg's Swin and
    K-Net port), every stage, the final logits and the auxiliary head, in float32 and float64.

    The soft-mask gathering makes the stages ill-conditioned on random weights (float32 rounding of the
    reference itself grows to ~1e-3 by stage 3), so the fixture holds the float64 reference and the
    test runs our model in float64."""
    model = seeded_semantic_swin()
    save_mmseg(model.state_dict(), tmp / "sem_swin_t.pth")
    model.load_state_dict(load_mmseg_checkpoint(tmp / "sem_swin_t.pth", model), strict=True)
    x = semantic_image()
    np.save(tmp / "sem_x.npy", x.numpy())
    golden, errors = {}, {}
    for dtype in ("float32", "float64"):
        cmd = [args.ref_python, str(args.ref_dir / "run_sem_swin_ref.py"), str(tmp / "sem_swin_t.pth"),
               str(tmp / "sem_x.npy"), str(tmp / f"sem_ref_{dtype}.npz")] + (["double"] if dtype == "float64" else [])
        subprocess.run(cmd, check=True)
        ref = dict(np.load(tmp / f"sem_ref_{dtype}.npz"))
        net = model.double() if dtype == "float64" else model.float()
        xi = x.double() if dtype == "float64" else x
        with torch.no_grad():
            feats = net.backbone(xi)
            logits = net.stage_logits(feats)
            final = net(xi * net.pixel_std.to(xi.dtype) + net.pixel_mean.to(xi.dtype))["sem_seg"]
            aux = net.auxiliary_head(feats)
        mine = {f"s{i}": t for i, t in enumerate(logits)}
        mine.update({f"res{i}": feats[f"res{i}"] for i in range(2, 6)}, final=final, aux=aux)
        errors[dtype] = {k: float(np.abs(m.numpy() - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-12))
                         for k, m in mine.items()}
        if dtype == "float64":
            golden["num_params"] = ref["num_params"]
            for k in mine:
                r = ref[k].astype(np.float64)
                step = max(1, -(-r.size // 1000))
                golden[f"{k}.val"] = r.reshape(-1)[::step].copy()
                golden[f"{k}.sum"], golden[f"{k}.shape"] = checksums(r), np.array(r.shape)
    model.float()
    print("semantic K-Net Swin-T max |ours - ref| / max |ref|:", json.dumps(errors))
    return golden, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-dir", type=Path, default=REPO / "tools/swin_reference")
    ap.add_argument("--ref-python", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "tests/data/parity/swin")
    ap.add_argument("--knet-large", action="store_true",
                    help="also run the full K-Net Swin-L (the original config itself) and record its errors "
                         "in meta.json (no fixture; ~3 GB of memory)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = seeded_swin("tiny")
    off = official_state(model)
    # our own converter must read the file back unchanged
    back = official_to_ours(off, model, classifier=False)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    x = parity_image()
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in model(x).items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save({"model": off}, tmp / "swin_t.pth")
        np.save(tmp / "x.npy", x.numpy())
        subprocess.run([args.ref_python, str(args.ref_dir / "run_swin_ref.py"), str(tmp / "swin_t.pth"),
                        str(tmp / "x.npy"), str(tmp / "ref.npz"), "tiny"], check=True)
        ref = dict(np.load(tmp / "ref.npz"))
        counts = json.load(open(tmp / "ref.json"))
        keys = json.load(open(tmp / "ref_keys.json"))
        knet_golden, knet_errors = knet_case(args, tmp)
        sem_golden, sem_errors = semantic_case(args, tmp)
        subprocess.run([args.ref_python, str(args.ref_dir / "mmseg_swin_layouts.py"), str(tmp / "mmseg_swin.json")],
                       check=True)
        mmseg_layouts = json.load(open(tmp / "mmseg_swin.json"))
        large_errors = knet_case(args, tmp, "large")[1] if args.knet_large else None
        sem = subprocess.run([args.ref_python, str(args.ref_dir / "count_sem.py")], check=True, capture_output=True,
                             text=True).stdout
        semantic = {k: {a: b for a, b in v.items() if a != "optimizer"} for k, v in json.loads(sem).items()}
    errors = {}
    for k, r in ref.items():
        errors[k] = float(np.abs(ours[k] - r).max() / np.abs(r).max())
        print(f"{k}: shape {r.shape} max rel err {errors[k]:.2e}")
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "swin_t.npz", **summarise(ref))
    meta = {"reference": REF, "case": "Swin-T seeded (tests/swin_test_utils.seeded_swin, seed 0), input "
            "parity_image() 1x3x100x130, official layout converted by mmdet's swin_converter",
            "max_rel_error_ours_vs_ref": errors,
            "knet_case": "panoptic K-Net on Swin-T (tests/swin_test_utils.seeded_knet_swin, seed 0; the original's "
            "Swin-L config with Swin-T dims), knet_photo() 62x93, weights through save_mmdet, loaded strictly",
            "knet_max_rel_error_ours_vs_ref": knet_errors,
            "semantic_case": "K-Net + UPerNet on Swin-T (knet_s3_upernet_swin-t_80k_adamw_ade20k.py) and Swin-L 640 "
            "(..._swin-l_80k_adamw_640x640_ade20k.py), with mmseg 0.30's SwinTransformer standing in for the "
            "Swin-Transformer-Semantic-Segmentation class the configs name; optimizer groups by mmcv 1.7.2's "
            "DefaultOptimizerConstructor with the configs' paramwise_cfg",
            "semantic_counts": semantic,
            "semantic_parity_case": "K-Net + UPerNet Swin-T (tests/swin_test_utils.seeded_semantic_swin, seed 0) vs "
            "mmseg 0.30's configs/knet/knet_s3_upernet_swin-t_8x2_512x512_adamw_80k_ade20k.py (BN for SyncBN) "
            "(mmseg's Swin and its own K-Net port, decode_heads/knet_head.py), weights through save_mmseg loaded "
            "strictly, semantic_image() 62x93, float32 and float64 (the fixture: float64)",
            "semantic_max_rel_error_ours_vs_ref": sem_errors,
            **({"knet_swin_l_case": "the original knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py itself, "
                "seeded_knet_swin(backbone='swin_l'), knet_photo(); not stored as a fixture",
                "knet_swin_l_max_rel_error_ours_vs_ref": large_errors} if large_errors else {}),
            "parameter_counts": counts}
    np.savez_compressed(args.out / "knet_swin_t.npz", **knet_golden)
    np.savez_compressed(args.out / "semantic_swin_t.npz", **sem_golden)
    with open(args.out / "mmseg_swin_layouts.json.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps(mmseg_layouts, indent=0, sort_keys=True).encode())
    with open(args.out / "knet_swin_l_panoptic_keys.json.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:  # mtime 0: the same bytes on every run
        f.write(json.dumps(keys, indent=0, sort_keys=True).encode())
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
