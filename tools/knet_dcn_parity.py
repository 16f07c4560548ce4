"""Regenerate ``tests/data/parity/knet_dcn/`` (K-Net R-101-DCN) from the original code.

What it does (nothing here runs at test time; the tests only read the fixture):

1. builds our K-Net R-101-DCN panoptic model with seeded weights whose deformable offsets vary
   by about a pixel (``tests/knet_test_utils.seeded_knet_dcn``) and writes it in the original
   layout with ``kmax_deeplab.checkpoints.mmdet.save_mmdet``;
2. runs the ORIGINAL K-Net (ZwwWayne/K-Net @5e50ee5, config
   ``configs/det/knet/knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco-panoptic.py``: mmcv's
   ``DeformConv2dPack``, i.e. ``type='DCN'``, v1) in ``--ref-python`` on a real COCO photo
   resized to 125×187 (canvas 128×192), loading that file strictly. mmcv lite has no compiled
   deformable-conv op, so the reference's ``mmcv.ops.deform_conv.deform_conv2d`` is replaced by
   :data:`REF_RUNNER`'s ``loop_deform_conv2d``: a per-output-pixel, per-kernel-point loop written
   from mmcv's CUDA kernel (``deformable_im2col_gpu_kernel`` + ``deformable_im2col_bilinear``),
   independent of our vectorised code. mmcv's own parameter layout, offset branch and
   ``DeformConv2dPack.forward`` (offset = ``conv_offset(x)``) are used unchanged;
3. compares our outputs with the reference's on the full tensors and prints the errors;
4. stores subsampled reference tensors + float64 checksums (backbone res2..res5, kernel-head
   masks, every stage's class and mask logits), the panoptic result and the original's
   parameter counts (``panoptic.npz``, ``meta.json``).

usage (from the repository root, with the project venv; the K-Net environment of
``tools/knet_parity.py`` at ``--ref-dir``):
    PYTHONPATH=src python tools/knet_dcn_parity.py --ref-dir /work/refs/knet \\
        --ref-python /work/refs/venv-knet/bin/python [--out tests/data/parity/knet_dcn]
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

from knet_test_utils import checksums, seeded_knet_dcn, subsample  # noqa: E402

from kmax_deeplab.checkpoints.mmdet import load_mmdet_checkpoint, save_mmdet  # noqa: E402
from kmax_deeplab.modeling.knet.postprocess import knet_panoptic_inference  # noqa: E402

PHOTO = REPO / "src/kmax_deeplab/assets/coco_sample/000000142238.jpg"
IMAGE_SIZE = (125, 187)  # resized photo (H, W); canvas 128 x 192
ORI_SHAPE = (125, 187)
REF_COMMIT = "ZwwWayne/K-Net@5e50ee5"
CONFIG = "configs/det/knet/knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco-panoptic.py"
INSTANCE_CONFIG = "configs/det/knet/knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco.py"

#: The reference runner, written to a temporary file and run with ``--ref-python`` in ``--ref-dir``
#: (which holds ``knet_env.py``: stand-ins and K-Net's registrations, see tools/knet_parity.py).
REF_RUNNER = r'''
import json, math, os, sys
sys.path.insert(0, os.getcwd())
import numpy as np
import torch
import torch.nn.functional as F
import knet_env  # noqa: stand-ins, K-Net registrations
import mmcv
import mmcv.ops.deform_conv as mdc
from mmcv import Config
from mmdet.models import build_detector

CALLS = []


def loop_deform_conv2d(input, offset, weight, stride=1, padding=0, dilation=1, groups=1, deform_groups=1,
                       bias=False, im2col_step=32):
    """mmcv's DCN v1 by a direct loop (float64): deformable_im2col_gpu_kernel + deformable_im2col_bilinear."""
    assert groups == 1 and not bias
    s, p, d = (x if isinstance(x, int) else x[0] for x in (stride, padding, dilation))
    x = input.double().numpy(); off = offset.double().numpy(); w = weight.double().numpy()
    B, C, H, W = x.shape; Co, _, kh, kw = w.shape; _, _, Ho, Wo = off.shape
    cg = C // deform_groups
    out = np.zeros((B, Co, Ho, Wo))
    for b in range(B):
        for ho in range(Ho):
            for wo in range(Wo):
                col = np.zeros((C, kh, kw))
                for g in range(deform_groups):
                    img = x[b, g * cg:(g + 1) * cg]
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            h = ho * s - p + i * d + off[b, g * 2 * kh * kw + 2 * k, ho, wo]
                            ww = wo * s - p + j * d + off[b, g * 2 * kh * kw + 2 * k + 1, ho, wo]
                            if h <= -1 or h >= H or ww <= -1 or ww >= W:
                                continue
                            hl, wl = math.floor(h), math.floor(ww)
                            lh, lw = h - hl, ww - wl
                            v = np.zeros(cg)
                            for yy, xx, f in ((hl, wl, (1 - lh) * (1 - lw)), (hl, wl + 1, (1 - lh) * lw),
                                              (hl + 1, wl, lh * (1 - lw)), (hl + 1, wl + 1, lh * lw)):
                                if 0 <= yy <= H - 1 and 0 <= xx <= W - 1:
                                    v += f * img[:, yy, xx]
                            col[g * cg:(g + 1) * cg, i, j] = v
                out[b, :, ho, wo] = np.tensordot(w, col, axes=3)
    CALLS.append((tuple(input.shape), float(np.abs(off).mean()),
                  float(((np.abs(off) > 0)).mean())))
    return torch.from_numpy(out).to(input.dtype)


mdc.deform_conv2d = loop_deform_conv2d


def build(path):
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    cfg.model.pop("pretrained", None)
    cfg.model.train_cfg = None
    return build_detector(cfg.model), cfg


def main():
    pth, inp_path, out_path, ref_dir = sys.argv[1:5]
    torch.set_num_threads(2)
    counts = {}
    for task, c in (("panoptic", CONFIG), ("instance", INSTANCE_CONFIG)):
        m, _ = build(ref_dir + "/" + c)
        counts[task] = dict(total=sum(q.numel() for q in m.parameters()),
                            backbone=sum(q.numel() for q in m.backbone.parameters()), keys=len(m.state_dict()),
                            conv2=type(m.backbone.layer2[0].conv2).__name__)
    model, cfg = build(ref_dir + "/" + CONFIG)
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True)["state_dict"], strict=True)
    model.eval()
    inp = np.load(inp_path)
    img = inp["image"].astype(np.float32)
    h, w = img.shape[:2]
    norm = cfg.img_norm_cfg
    x = mmcv.imnormalize(img, np.array(norm["mean"], np.float32), np.array(norm["std"], np.float32), to_rgb=False)
    x = mmcv.impad_to_multiple(x, 32, pad_val=0)
    hp, wp = x.shape[:2]
    t = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
    ori = tuple(int(v) for v in inp["ori_shape"])
    meta = dict(ori_shape=ori + (3,), img_shape=(h, w, 3), pad_shape=(hp, wp, 3), batch_input_shape=(hp, wp),
                scale_factor=np.array([w / ori[1], h / ori[0]] * 2, np.float32), flip=False)
    out = {}
    with torch.no_grad():
        feats = model.backbone(t)
        for i, f in enumerate(feats):
            out[f"res{i + 2}"] = f
        feats = model.neck(feats)
        proposal_feats, x_feats, mask_preds, cls_scores, seg_preds = model.rpn_head.simple_test_rpn(feats, [meta])
        out["head_masks_s8"] = mask_preds
        out["head_semantic_s8"] = seg_preds
        obj, masks = proposal_feats, mask_preds
        roi = model.roi_head
        for s in range(roi.num_stages):
            r = roi._mask_forward(s, x_feats, obj, masks, [meta])
            obj, masks = r["object_feats"], r["mask_preds"]
            out[f"s{s}_cls"] = r["cls_score"]
            out[f"s{s}_masks_s8"] = r["mask_preds"]
        n_calls = len(CALLS)
        out["pan_results"] = torch.from_numpy(model.simple_test(t, [meta])[0]["pan_results"].astype(np.int64))
    np.savez(out_path, **{k: v.numpy() for k, v in out.items()})
    print(json.dumps(dict(counts=counts, dcn_calls=n_calls, mean_abs_offset=[c[1] for c in CALLS[:n_calls]])))


CONFIG = "__CONFIG__"
INSTANCE_CONFIG = "__INSTANCE_CONFIG__"
main()
'''


def up2(x: np.ndarray) -> np.ndarray:
    return torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear",
                                           align_corners=False).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-dir", default="/work/refs/knet", help="folder with knet_env.py (stand-ins)")
    ap.add_argument("--knet-dir", default="/work/refs/K-Net", help="ZwwWayne/K-Net checkout (configs)")
    ap.add_argument("--ref-python", default="/work/refs/venv-knet/bin/python")
    ap.add_argument("--out", default=str(REPO / "tests/data/parity/knet_dcn"))
    a = ap.parse_args()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = np.asarray(Image.open(PHOTO).convert("RGB").resize(IMAGE_SIZE[::-1], Image.BILINEAR))
    model = seeded_knet_dcn("panoptic")
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "knet_r101_dcn_seed0.pth"
        save_mmdet(model.state_dict(), pth, meta={"kmax_deeplab": "seeded test weights", "task": "panoptic"})
        back = load_mmdet_checkpoint(pth, model)
        assert all(torch.equal(back[k], v) for k, v in model.state_dict().items()), "round trip changed weights"
        inp, res = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, image=image, ori_shape=np.array(ORI_SHAPE))
        runner = Path(tmp) / "run_ref_dcn.py"
        runner.write_text(REF_RUNNER.replace("__CONFIG__", CONFIG).replace("__INSTANCE_CONFIG__", INSTANCE_CONFIG))
        proc = subprocess.run([a.ref_python, str(runner), str(pth), str(inp), str(res), a.knet_dir],
                              cwd=a.ref_dir, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"reference run failed ({proc.returncode})")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        ref = dict(np.load(res))
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        feats = model.backbone(model.normalize(x))
        out = model(x)
    mine = {f"res{i}": feats[f"res{i}"].numpy() for i in range(2, 6)}
    mine["head_masks"], mine["head_semantic"] = out["init_all_masks"].numpy(), out["semantic_logits"].numpy()
    for s, o in enumerate(out["aux_outputs"] + [out]):
        mine[f"s{s}_cls"], mine[f"s{s}_masks"] = o["pred_logits"].numpy(), o["pred_masks"].numpy()
    pairs = {f"res{i}": ref[f"res{i}"] for i in range(2, 6)}
    pairs["head_masks"], pairs["head_semantic"] = up2(ref["head_masks_s8"]), up2(ref["head_semantic_s8"])
    for s in range(3):
        pairs[f"s{s}_cls"], pairs[f"s{s}_masks"] = ref[f"s{s}_cls"], up2(ref[f"s{s}_masks_s8"])
    golden: dict[str, np.ndarray] = {"image": image, "pan_results": ref["pan_results"].astype(np.int32)}
    errors = {}
    for k, r in pairs.items():
        errors[k] = float(np.abs(mine[k] - r).max() / max(np.abs(r).max(), 1e-12))
        golden[f"{k}.val"], golden[f"{k}.sum"], golden[f"{k}.shape"] = subsample(r)[1], checksums(r), np.array(r.shape)
    pan, segs = knet_panoptic_inference(out["pred_logits"][0], out["pred_masks"][0], num_thing_classes=80,
                                        num_kernels=100, canvas_size=out["canvas_size"], valid_size=IMAGE_SIZE,
                                        output_size=ORI_SHAPE)
    print("max |ours - ref| / max |ref|:", json.dumps(errors, indent=1))
    print("panoptic segments:", len(segs), "reference ids:", len(np.unique(ref["pan_results"])))
    print("reference:", json.dumps(info["counts"]), "deformable convs run:", info["dcn_calls"])
    meta = {"reference": REF_COMMIT, "config": CONFIG, "photo": PHOTO.name, "image_size": IMAGE_SIZE,
            "ori_shape": ORI_SHAPE, "torch": torch.__version__, "seed": 0, "max_rel_error": errors,
            "reference_parameters": info["counts"], "reference_dcn_calls": info["dcn_calls"],
            "reference_mean_abs_offset": [round(v, 4) for v in info["mean_abs_offset"]],
            "dcn_oracle": "per-pixel loop of mmcv's deformable_im2col kernel, float64 (REF_RUNNER)"}
    np.savez_compressed(out_dir / "panoptic.npz", **golden)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("wrote", out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
