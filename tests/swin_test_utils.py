"""Helpers shared by the Swin tests and ``tools/make_swin_parity.py``: seeded non-trivial Swin weights.

The fixtures in ``tests/data/parity/swin/`` were produced by mmdet 2.28.2's ``SwinTransformer``
from the weights :func:`seeded_swin` builds (written in the official layout by
:func:`kmax_deeplab.checkpoints.swin.ours_to_official`, converted by mmdet's own
``swin_converter``), so the same seed must give the same tensors: only torch's CPU generator is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from kmax_deeplab.checkpoints.swin import ours_to_official
from kmax_deeplab.modeling.backbones.swin import SwinTransformer, relative_position_index, swin

PARITY_DIR = Path(__file__).resolve().parent / "data" / "parity" / "swin"
#: Input of the parity case: 3 x 100 x 130, no side a multiple of 4 x 7 (window padding at every stage).
IMAGE_SHAPE = (1, 3, 100, 130)
#: Pixels (y, x) per stage whose full channel vectors the fixture stores.
PROBES = 4
PROJ_DIM = 8


@torch.no_grad()
def seeded_swin(size: str = "tiny", seed: int = 0) -> SwinTransformer:
    """Swin ``size`` (drop path 0.2, eval mode) with every 1-D parameter randomised and a strong
    relative position bias: LN weights ~ U(0.5, 1.5), LN / Linear / conv biases ~ N(0, 0.1²),
    bias tables ~ N(0, 1) (so a wrong bias index or a lost mask changes the outputs)."""
    torch.manual_seed(seed)
    model = swin(size, drop_path=0.2)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(owner, nn.LayerNorm) and name.endswith("weight"):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith("relative_position_bias_table"):
            p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def parity_image(seed: int = 0) -> torch.Tensor:
    """The normalised input ``[1, 3, 100, 130]`` float32 of the parity case."""
    return torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed + 100))


def summarise(feats: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Small record of stage outputs ``res2..res5`` ``[1, C, h, w]``: a seeded projection to
    ``PROJ_DIM`` channels at every pixel, the full vectors at ``PROBES`` seeded pixels, and
    float64 sum / sum of squares."""
    g = torch.Generator().manual_seed(seed + 200)
    out = {}
    for name in ("res2", "res3", "res4", "res5"):
        f = np.asarray(feats[name], np.float32)[0]
        c, h, w = f.shape
        proj = torch.randn((PROJ_DIM, c), generator=g).numpy() / np.sqrt(c)
        ys = torch.randint(0, h, (PROBES,), generator=g).numpy()
        xs = torch.randint(0, w, (PROBES,), generator=g).numpy()
        out[f"{name}_proj"] = np.einsum("kc,chw->khw", proj, f).astype(np.float32)
        out[f"{name}_probe"] = f[:, ys, xs].T.copy()
        out[f"{name}_stats"] = np.array([f.astype(np.float64).sum(), (f.astype(np.float64) ** 2).sum()])
        out[f"{name}_shape"] = np.array(f.shape)
    return out


def official_classifier_checkpoint(backbone: nn.Module, num_classes: int = 21841) -> dict:
    """``{"model": ...}`` of ``backbone`` in the layout of the official ImageNet Swin files
    (microsoft/Swin-Transformer, e.g. ``swin_large_patch4_window7_224_22k.pth``): no ``norm{i}``;
    the classifier ``head.*``, the final ``norm.*``, and the ``relative_position_index`` (every
    block) / ``attn_mask`` (shifted blocks, 224² geometry: 64 windows) buffers those files hold."""
    off = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ours_to_official(backbone.state_dict()).items()
           if not k.startswith("norm")}
    for k in list(off):
        if k.endswith(".attn.relative_position_bias_table"):
            side = int(round((off[k].shape[0] ** 0.5 + 1) / 2))
            off[k.replace("relative_position_bias_table", "relative_position_index")] = relative_position_index(side)
            if int(k.split(".")[3]) % 2:
                off[k.replace("attn.relative_position_bias_table", "attn_mask")] = torch.zeros(64, side ** 2, side ** 2)
    dim = off["layers.3.blocks.0.norm1.weight"].shape[0]
    off.update({"norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim),
                "head.weight": torch.zeros(num_classes, dim), "head.bias": torch.zeros(num_classes)})
    return {"model": off}


#: The K-Net Swin-T case: the real COCO photo of the K-Net fixtures, resized to 62 x 93 (canvas 64 x 96).
KNET_IMAGE_SIZE = (62, 93)


@torch.no_grad()
def seeded_knet_swin(seed: int = 0, backbone: str = "swin_t"):
    """Panoptic K-Net on Swin-T (``build_knet(backbone=backbone)``, drop path 0.2, nothing frozen) with
    :func:`knet_test_utils.randomise_knet`'s norms and biases and N(0, 1) position-bias tables; eval mode."""
    from knet_test_utils import randomise_knet

    from kmax_deeplab.modeling.knet import build_knet

    torch.manual_seed(seed)
    model = build_knet(backbone=backbone, backbone_drop_path=0.2, frozen_stages=-1)
    randomise_knet(model, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    for name, p in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def knet_photo() -> np.ndarray:
    """float32 ``[62, 93, 3]`` RGB 0..255: the bundled COCO photo 000000142238 resized (PIL bilinear)."""
    from PIL import Image

    photo = Path(__file__).resolve().parents[1] / "src/kmax_deeplab/assets/coco_sample/000000142238.jpg"
    img = Image.open(photo).convert("RGB").resize(KNET_IMAGE_SIZE[::-1], Image.BILINEAR)
    return np.asarray(img).astype(np.float32)


@torch.no_grad()
def seeded_semantic_swin(seed: int = 0):
    """Semantic K-Net + UPerNet on Swin-T as mmseg 0.30's own K-Net config builds it (UPerNet and kernels
    512 wide, updated as two 256-d halves; the K-Net repo's config, our preset, has 256), plain BN,
    with :func:`knet_test_utils.randomise_knet`'s norms, biases and BN statistics and N(0, 1)
    position-bias tables; eval mode."""
    from knet_test_utils import randomise_knet

    from kmax_deeplab.modeling.knet_semantic.model import build_knet_semantic

    torch.manual_seed(seed)
    model = build_knet_semantic(backbone="swin_t", decode_head="upernet", num_classes=150, backbone_drop_path=0.3,
                                head_channels=512, updator_dim=256)
    randomise_knet(model, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    for name, p in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def semantic_image() -> torch.Tensor:
    """The normalised ``[1, 3, 62, 93]`` input of the semantic case: :func:`knet_photo` with the ImageNet
    mean / std (mmseg ``img_norm_cfg``)."""
    from kmax_deeplab.geometry import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(knet_photo()).permute(2, 0, 1)[None]
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
