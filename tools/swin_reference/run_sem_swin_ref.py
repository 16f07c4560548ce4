"""The semantic K-Net + UPerNet on Swin-T as mmseg 0.30's own config builds it
(configs/knet/knet_s3_upernet_swin-t_8x2_512x512_adamw_80k_ade20k.py: mmseg's SwinTransformer and mmseg's
own K-Net port, decode_heads/knet_head.py, i.e. what mmseg's released K-Net Swin files were made with),
on one normalised image.

usage: run_sem_swin_ref.py W.pth IMAGE.npy OUT.npz [double]   (W.pth {"state_dict"} loaded strictly;
IMAGE [1,3,H,W]; "double": run in float64)
"""
import os
KNET_REPO = os.environ.get("KNET_REPO", "/work/refs/K-Net")          # ZwwWayne/K-Net @5e50ee5 checkout
KNET_ENV_DIR = os.environ.get("KNET_ENV_DIR", "/work/refs/knet")     # knet_env.py (tools/knet_parity.py)
KNETSEM_ENV_DIR = os.environ.get("KNETSEM_ENV_DIR", "/work/refs/knetsem")  # knetsem_env.py (knet_semantic_parity)
import sys
import types
sys.path.insert(0, os.path.join(KNET_ENV_DIR, "stubs"))        # torchvision stand-in (only __version__)
ext = types.ModuleType("mmcv._ext")
def _missing(name):
    if name.startswith("__"):
        raise AttributeError(name)
    def f(*a, **k):
        raise RuntimeError(f"mmcv._ext.{name} (compiled op) called: stand-in only")
    return f
ext.__getattr__ = _missing
sys.modules["mmcv._ext"] = ext
import warnings; warnings.filterwarnings("ignore")
import mmseg.models  # noqa: mmseg's own classes only
import numpy as np
import torch
from mmcv import Config
from mmseg.models import build_segmentor
import mmseg, os

def main():
    pth, img_path, out_path = sys.argv[1:4]
    torch.set_num_threads(1)
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmseg.__file__),
                                       ".mim/configs/knet/knet_s3_upernet_swin-t_8x2_512x512_adamw_80k_ade20k.py"))
    m = cfg.model
    m.pop("pretrained", None)
    m.backbone.pop("init_cfg", None)
    bn = dict(type="BN", requires_grad=True)
    m.decode_head.kernel_generate_head.norm_cfg = bn
    m.auxiliary_head.norm_cfg = bn
    model = build_segmentor(m)
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True)["state_dict"], strict=True)
    model.eval()
    img = torch.from_numpy(np.load(img_path))
    if len(sys.argv) > 4 and sys.argv[4] == "double":
        model.double()
        img = img.double()
    h, w = img.shape[-2:]
    metas = [dict(ori_shape=(h, w, 3), img_shape=(h, w, 3), pad_shape=(h, w, 3), flip=False, scale_factor=1.0)]
    out = {}
    with torch.no_grad():
        x = model.extract_feat(img)
        for i, f in enumerate(x):
            out[f"res{i + 2}"] = f.numpy()
        dh = model.decode_head
        # mmseg IterativeDecodeHead.forward, keeping every stage (eval: no dropout)
        feats = dh.kernel_generate_head._forward_feature(x)
        sem_seg = dh.kernel_generate_head.cls_seg(feats)
        kernels = dh.kernel_generate_head.conv_seg.weight.clone()
        kernels = kernels[None].expand(feats.size(0), *kernels.size())
        out["s0"] = sem_seg.numpy()
        for i in range(dh.num_stages):
            sem_seg, kernels = dh.kernel_update_head[i](feats, kernels, sem_seg)
            out[f"s{i + 1}"] = sem_seg.numpy()
        out["final"] = model.encode_decode(img, metas).numpy()
        out["aux"] = model.auxiliary_head(x).numpy()
    out["num_params"] = np.array(sum(p.numel() for p in model.parameters()))
    np.savez(out_path, **out)
    print("ref swin-t semantic", type(model.backbone).__module__, {k: v.shape for k, v in out.items()})

main()
