"""Original K-Net (ZwwWayne/K-Net @5e50ee5, mmdet 2.28.2) panoptic on a Swin backbone, on one image.

usage: run_knet_swin_ref.py W.pth IMAGE.npy OUT.npz SIZE   (SIZE tiny|large)
The config is knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py; for tiny its backbone dims are
replaced by Swin-T's (embed 96, 2/2/6/2, 3/6/12/24) and the FPN inputs by 96/192/384/768.
W.pth = {"state_dict", "meta"} loaded strictly. IMAGE.npy: float32 [H, W, 3] RGB 0..255.
"""
import os
KNET_REPO = os.environ.get("KNET_REPO", "/work/refs/K-Net")          # ZwwWayne/K-Net @5e50ee5 checkout
KNET_ENV_DIR = os.environ.get("KNET_ENV_DIR", "/work/refs/knet")     # knet_env.py (tools/knet_parity.py)
KNETSEM_ENV_DIR = os.environ.get("KNETSEM_ENV_DIR", "/work/refs/knetsem")  # knetsem_env.py (knet_semantic_parity)
import sys
sys.path.insert(0, KNET_ENV_DIR)
import knet_env  # noqa: F401
import mmcv
import numpy as np
import torch
from mmcv import Config
from mmdet.models import build_detector

def main():
    pth, img_path, out_path, size = sys.argv[1:5]
    torch.set_num_threads(1)
    cfg = Config.fromfile(KNET_REPO + "/configs/det/knet/knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py")
    cfg.model.backbone.init_cfg = None
    cfg.model.pop("pretrained", None)
    cfg.model.train_cfg = None
    if size == "tiny":
        cfg.model.backbone.embed_dims = 96
        cfg.model.backbone.depths = [2, 2, 6, 2]
        cfg.model.backbone.num_heads = [3, 6, 12, 24]
        cfg.model.neck.in_channels = [96, 192, 384, 768]
    model = build_detector(cfg.model)
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True)["state_dict"], strict=True)
    model.eval()
    img = np.load(img_path)
    h, w = img.shape[:2]
    norm = cfg.img_norm_cfg
    x = mmcv.imnormalize(img, np.array(norm["mean"], np.float32), np.array(norm["std"], np.float32), to_rgb=False)
    x = mmcv.impad_to_multiple(x, 32, pad_val=0)
    hp, wp = x.shape[:2]
    t = torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
    meta = dict(ori_shape=(h, w, 3), img_shape=(h, w, 3), pad_shape=(hp, wp, 3), batch_input_shape=(hp, wp),
                scale_factor=np.ones(4, np.float32), flip=False)
    out = {}
    with torch.no_grad():
        feats = model.backbone(t)
        for i, f in enumerate(feats):
            out[f"res{i + 2}"] = f
        feats = model.extract_feat(t)
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
        out["pan_results"] = torch.from_numpy(model.simple_test(t, [meta])[0]["pan_results"].astype(np.int64))
    np.savez(out_path, **{k: v.numpy() for k, v in out.items()})

main()
