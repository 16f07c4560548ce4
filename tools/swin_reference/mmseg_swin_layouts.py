"""State-dict layouts and parameter counts of mmsegmentation 0.30's own K-Net Swin configs (the configs of
mmseg's released K-Net Swin files: configs/knet/knet_s3_upernet_swin-{t,l}_8x2_{512x512,640x640}_adamw_80k_ade20k.py),
built on CPU with mmseg's own classes (decode_heads/knet_head.py) and BN in place of SyncBN.

usage: mmseg_swin_layouts.py OUT.json   (name -> {"num_params", "keys": {key: shape}})
"""
import json
import os
import sys
import types

KNET_ENV_DIR = os.environ.get("KNET_ENV_DIR", "/work/refs/knet")     # stubs/ (torchvision stand-in)
sys.path.insert(0, os.path.join(KNET_ENV_DIR, "stubs"))
ext = types.ModuleType("mmcv._ext")


def _missing(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def f(*a, **k):
        raise RuntimeError(f"mmcv._ext.{name} (compiled op) called: stand-in only")
    return f


ext.__getattr__ = _missing
sys.modules["mmcv._ext"] = ext
import warnings; warnings.filterwarnings("ignore")  # noqa: E402,E702
import mmseg  # noqa: E402
import mmseg.models  # noqa: E402,F401
from mmcv import Config  # noqa: E402
from mmseg.models import build_segmentor  # noqa: E402

NAMES = ("knet_s3_upernet_swin-t_8x2_512x512_adamw_80k_ade20k", "knet_s3_upernet_swin-l_8x2_512x512_adamw_80k_ade20k",
         "knet_s3_upernet_swin-l_8x2_640x640_adamw_80k_ade20k")
out = {}
for name in NAMES:
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmseg.__file__), ".mim/configs/knet", name + ".py"))
    m = cfg.model
    m.pop("pretrained", None)
    bn = dict(type="BN", requires_grad=True)
    m.decode_head.kernel_generate_head.norm_cfg = bn
    m.auxiliary_head.norm_cfg = bn
    model = build_segmentor(m)
    out[name] = {"num_params": sum(p.numel() for p in model.parameters()),
                 "drop_path_rate": m.backbone.drop_path_rate, "crop_size": list(cfg.crop_size),
                 "keys": {k: list(v.shape) for k, v in model.state_dict().items()}}
json.dump(out, open(sys.argv[1], "w"))
print({k: (v["num_params"], len(v["keys"]), v["drop_path_rate"], v["crop_size"]) for k, v in out.items()})
