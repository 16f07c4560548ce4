"""Parameter counts of the semantic K-Net + UPerNet on Swin-T / Swin-L (original K-Net seg heads, mmseg 0.30).

The K-Net repo's configs/seg/knet/*swin* build Swin-Transformer-Semantic-Segmentation's SwinTransformer
(kwargs embed_dim / ape / use_checkpoint), which neither the K-Net repo nor mmseg 0.30 ships; the same
network is mmseg 0.30's SwinTransformer (embed_dims, ...), used here with the configs' numbers.
"""
import os
KNET_REPO = os.environ.get("KNET_REPO", "/work/refs/K-Net")          # ZwwWayne/K-Net @5e50ee5 checkout
KNET_ENV_DIR = os.environ.get("KNET_ENV_DIR", "/work/refs/knet")     # knet_env.py (tools/knet_parity.py)
KNETSEM_ENV_DIR = os.environ.get("KNETSEM_ENV_DIR", "/work/refs/knetsem")  # knetsem_env.py (knet_semantic_parity)
import json, sys
sys.path.insert(0, KNETSEM_ENV_DIR)
import knetsem_env as E
from mmcv import Config
from mmseg.models import build_segmentor

CFG = KNET_REPO + "/configs/seg/knet/knet_s3_upernet_swin-{}_80k_adamw{}_ade20k.py"
out = {}
for size, suffix, dims, depths, heads, dp in (("t", "", 96, [2, 2, 6, 2], [3, 6, 12, 24], 0.3),
                                               ("l", "_640x640", 192, [2, 2, 18, 2], [6, 12, 24, 48], 0.4)):
    cfg = Config.fromfile(CFG.format(size, suffix))
    m = cfg.model
    m.pop("pretrained", None)
    bb = m.backbone
    assert (bb.embed_dim, list(bb.depths), list(bb.num_heads), bb.drop_path_rate) == (dims, depths, heads, dp), bb
    m.backbone = dict(type="SwinTransformer", embed_dims=dims, depths=depths, num_heads=heads, window_size=7,
                      mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
                      drop_path_rate=dp, use_abs_pos_embed=False, patch_norm=True, out_indices=(0, 1, 2, 3))
    bn = dict(type="BN", requires_grad=True)
    m.decode_head.kernel_generate_head.norm_cfg = bn
    m.auxiliary_head.norm_cfg = bn
    model = build_segmentor(m)
    n = sum(p.numel() for p in model.parameters())
    a = sum(p.numel() for p in model.auxiliary_head.parameters())
    b = sum(p.numel() for p in model.backbone.parameters())
    import importlib.machinery
    sys.modules["mmcv._ext"].__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)  # "no compiled ops"
    from mmcv.runner import build_optimizer
    opt = build_optimizer(model, cfg.optimizer)
    no_decay = [p for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    decay = [p for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert all(g["weight_decay"] in (0, 0.0005) for g in opt.param_groups)
    out[f"swin_{size}"] = dict(total=n, without_aux=n - a, backbone=b, optimizer=dict(cfg.optimizer),
                               no_decay_tensors=len(no_decay), no_decay_elements=sum(p.numel() for p in no_decay),
                               decay_tensors=len(decay), decay_elements=sum(p.numel() for p in decay),
                               crop=list(cfg.crop_size) if "crop_size" in cfg else None)
print(json.dumps(out, indent=1, default=str))
