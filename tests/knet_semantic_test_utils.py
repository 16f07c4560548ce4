"""Shared pieces of the semantic K-Net parity test and of ``tools/knet_semantic_parity.py``:
the seeded full-size models and the input photo (both sides build exactly these)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from knet_test_utils import randomise_knet
from kmax_deeplab.modeling.knet_semantic import KNetSemantic, build_knet_semantic

PARITY_DIR = Path(__file__).resolve().parent / "data" / "parity" / "knet_semantic"
PHOTO = Path(__file__).resolve().parents[1] / "src/kmax_deeplab/assets/coco_sample/000000142238.jpg"
IMAGE_SIZE = (64, 96)  # (H, W) the photo is resized to (PIL bilinear)
HEADS = ("upernet", "fcn")
#: mmseg ``img_norm_cfg`` (RGB); the reference gets the image normalised with exactly these.
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def seeded_knet_semantic(head: str, seed: int = 0) -> KNetSemantic:
    """K-Net + ``head`` R-50 (ADE20K, 150 classes, with the auxiliary head) with seeded weights, eval mode.

    Torch seed ``seed``; every bias / norm affine randomised (:func:`knet_test_utils.randomise_knet`);
    ``conv_seg`` weights ~ N(0, 0.1²) so the stage-0 softmax is far from uniform; the decode and
    auxiliary heads' BN running statistics set to their batch statistics on the parity photo and its
    mirror (one train-mode forward with momentum 1; each variance at least half its layer's mean), so that
    the heads' features are O(1) and the logits O(10²). With random
    statistics alone the backbone's O(10³) activations give O(10⁴) logits, the stages' softmax
    gathering is one-hot and fp32 itself (the original code in fp32 vs fp64) moves the FCN
    stages 2-3 by ~2e-3 relative; calibrating the backbone too makes its 50 layers amplify
    input rounding ~200x.
    """
    torch.manual_seed(seed)
    model = build_knet_semantic(decode_head=head)
    randomise_knet(model, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for m in (model.decode_head, model.auxiliary_head):
            m.conv_seg.weight.copy_(0.1 * torch.randn(m.conv_seg.weight.shape, generator=g))
        bns = [m for h in (model.decode_head, model.auxiliary_head) for m in h.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.momentum = 1.0
        # in fp64, so the statistics (rounded to fp32 after) do not depend on the thread count
        model.double().train()
        model.pixel_mean, model.pixel_std = model.pixel_mean.double(), model.pixel_std.double()
        x = torch.from_numpy(photo().copy()).permute(2, 0, 1)[None].double()
        model(torch.cat([x, x.flip(-1)]))  # two images: the PPM's 1x1 pool needs > 1 value per channel
        model.float()
        model.pixel_mean, model.pixel_std = model.pixel_mean.float(), model.pixel_std.float()
        for bn in bns:  # a channel almost constant over the few pixels would divide by ~sqrt(eps)
            bn.running_var.clamp_(min=0.5 * float(bn.running_var.mean()))
            bn.momentum = 0.1
            bn.num_batches_tracked.fill_(7)
    return model.eval()


def photo() -> np.ndarray:
    """The bundled COCO photo (CC BY 4.0) as RGB uint8 ``[64, 96, 3]``."""
    return np.asarray(Image.open(PHOTO).convert("RGB").resize(IMAGE_SIZE[::-1], Image.BILINEAR))


def subsample(x: np.ndarray, limit: int = 1000, dtype=np.float32) -> np.ndarray:
    """At most ``limit`` evenly strided entries of ``x`` (flattened, as ``dtype``)."""
    flat = np.asarray(x, dtype=dtype).reshape(-1)
    return flat[:: max(1, -(-flat.size // limit))]


def checksums(x: np.ndarray) -> np.ndarray:
    """``[sum, sum |x|, sum x²]`` in float64 over the whole tensor."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([x.sum(), np.abs(x).sum(), (x * x).sum()])


@torch.no_grad()
def ours(model: KNetSemantic, image: np.ndarray) -> dict[str, np.ndarray]:
    """Our stage logits ``s0..s3``, the eval output ``final`` and the auxiliary logits ``aux``
    (in the model's dtype: fp32, or fp64 after ``model.double()``)."""
    dtype = model.decode_head.conv_seg.weight.dtype
    model.pixel_mean, model.pixel_std = model.pixel_mean.to(dtype), model.pixel_std.to(dtype)
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].to(dtype)
    feats = model.backbone((x - model.pixel_mean) / model.pixel_std)
    out = {f"s{i}": t.numpy() for i, t in enumerate(model.stage_logits(feats))}
    out["final"] = model(x)["sem_seg"].numpy()
    out["aux"] = model.auxiliary_head(feats).numpy()
    return out
