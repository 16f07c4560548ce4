"""Reference side of tools/make_swin_parity.py: mmdet 2.28.2's SwinTransformer (and K-Net Swin-L) on CPU.

usage: python run_swin_ref.py IN.pth IMAGE.npy OUT.npz SIZE   (SIZE tiny|large)
IN.pth holds {"model": official-layout state dict}; it is converted with mmdet's own
swin_converter (as K-Net's config does with convert_weights=True) and loaded strictly.
Also writes parameter counts (OUT.json) of mmdet's Swin-T, Swin-L and of K-Net's
knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py built on CPU.
"""
import os
KNET_REPO = os.environ.get("KNET_REPO", "/work/refs/K-Net")          # ZwwWayne/K-Net @5e50ee5 checkout
KNET_ENV_DIR = os.environ.get("KNET_ENV_DIR", "/work/refs/knet")     # knet_env.py (tools/knet_parity.py)
KNETSEM_ENV_DIR = os.environ.get("KNETSEM_ENV_DIR", "/work/refs/knetsem")  # knetsem_env.py (knet_semantic_parity)
import json, sys
sys.path.insert(0, KNET_ENV_DIR)
import knet_env  # noqa: F401  (stand-ins, K-Net registrations)
import numpy as np
import torch
from mmdet.models.backbones.swin import SwinTransformer
from mmdet.models.utils.ckpt_convert import swin_converter

SIZES = {"tiny": dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
         "large": dict(embed_dims=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48])}

def build(size):
    return SwinTransformer(**SIZES[size], window_size=7, mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0.,
                           attn_drop_rate=0., drop_path_rate=0.2, patch_norm=True, out_indices=(0, 1, 2, 3),
                           with_cp=False, convert_weights=True)

def main():
    src, img, out, size = sys.argv[1:5]
    torch.set_num_threads(1)
    official = torch.load(src, map_location="cpu")["model"]
    sd = {k[len("backbone."):]: v for k, v in swin_converter(official).items()}
    model = build(size)
    model.eval()
    model.load_state_dict(sd, strict=True)
    x = torch.from_numpy(np.load(img))
    with torch.no_grad():
        outs = model(x)
    np.savez(out, **{f"res{i + 2}": o.numpy() for i, o in enumerate(outs)})
    counts = {f"mmdet_swin_{s}": sum(p.numel() for p in build(s).parameters()) for s in SIZES}
    from mmcv import Config
    from mmdet.models import build_detector
    cfg = Config.fromfile(KNET_REPO + "/configs/det/knet/knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py")
    cfg.model.backbone.init_cfg = None
    cfg.model.pop("pretrained", None)
    cfg.model.train_cfg = None
    det = build_detector(cfg.model)
    counts["knet_swin_l_panoptic"] = sum(p.numel() for p in det.parameters())
    counts["knet_swin_l_panoptic_backbone"] = sum(p.numel() for p in det.backbone.parameters())
    counts["knet_swin_l_panoptic_state_keys"] = len(det.state_dict())
    json.dump({k: list(v.shape) for k, v in det.state_dict().items()}, open(out[:-4] + "_keys.json", "w"))
    buffers = {k.split(".")[-1] for k, _ in det.backbone.named_buffers()}
    counts["knet_swin_l_panoptic_backbone_buffers"] = sorted(buffers)
    inst = Config.fromfile(KNET_REPO + "/configs/det/knet/knet_s3_r50_fpn_ms-3x_coco.py")
    inst.model.backbone = cfg.model.backbone
    inst.model.neck.in_channels = [192, 384, 768, 1536]
    inst.model.pop("pretrained", None)
    inst.model.train_cfg = None
    det_i = build_detector(inst.model)
    counts["knet_swin_l_instance"] = sum(p.numel() for p in det_i.parameters())
    json.dump(counts, open(out[:-4] + ".json", "w"), indent=1)
    print(json.dumps(counts))

main()
