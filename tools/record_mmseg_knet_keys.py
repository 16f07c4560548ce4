"""Record the state-dict keys + shapes of mmsegmentation 0.30's own K-Net ADE20K configs
(``mmseg/.mim/configs/knet/*.py``: the layout of the released
download.openmmlab.com/mmsegmentation/v0.5/knet checkpoints), built on CPU without weights, into
``tests/data/semantic/mmseg_knet_zoo_keys.json.gz`` (SyncBN built as BN: same keys).

Run OUTSIDE the repository's venv, with torch 2.13, mmcv 1.7.2 and mmsegmentation 0.30.0
(``/work/refs/venv-knet``; ``TORCHVISION_STUB`` a folder with a stand-in ``torchvision`` holding only
``__version__``; ``mmcv._ext`` is stubbed here)::

    TORCHVISION_STUB=/path/to/stubs /path/to/venv-knet/bin/python tools/record_mmseg_knet_keys.py

Compared by ``tests/test_knet_semantic_parity.py::test_released_mmseg_layout_converts_strictly``.
"""
import gzip
import json
import os
import sys
import types
import warnings
sys.path.insert(0, os.environ.get("TORCHVISION_STUB", "/work/refs/knet/stubs"))
ext = types.ModuleType("mmcv._ext")
def _missing(name):
    if name.startswith("__"):
        raise AttributeError(name)
    def f(*a, **k):
        raise RuntimeError(name)
    return f
ext.__getattr__ = _missing
sys.modules["mmcv._ext"] = ext
warnings.filterwarnings("ignore")
import mmseg.models
from mmcv import Config
from mmseg.models import build_segmentor
D = os.path.join(os.path.dirname(mmseg.__file__), ".mim/configs/knet")
out = {}
for f in sorted(os.listdir(D)):
    if not f.endswith(".py"):
        continue
    cfg = Config.fromfile(f"{D}/{f}")
    cfg.model.pop("pretrained", None)
    cfg.model.backbone.pop("init_cfg", None)
    for part in (cfg.model.backbone, cfg.model.decode_head.kernel_generate_head, cfg.model.auxiliary_head):
        if "norm_cfg" in part and part.norm_cfg.get("type") == "SyncBN":
            part.norm_cfg = dict(type="BN", requires_grad=True)
    m = build_segmentor(cfg.model)
    out[f[:-3]] = {n: list(v.shape) for n, v in m.state_dict().items()}
    print(f, len(out[f[:-3]]), sum(p.numel() for p in m.parameters()))
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "semantic",
                   "mmseg_knet_zoo_keys.json.gz")
with gzip.open(OUT, "wt") as fh:
    json.dump(out, fh, separators=(",", ":"))
