"""The semantic K-Net == the original code (ZwwWayne/K-Net @5e50ee5 ``knet/seg``, mmseg 0.30.0).

Fixtures ``tests/data/parity/knet_semantic/{upernet,fcn}.npz`` (``tools/knet_semantic_parity.py``):
the original ``EncoderDecoder`` + ``IterativeDecodeHead`` run on CPU on the bundled COCO photo
(64x96) with our seeded weights written in the mmseg layout: the decode head's logits (``s0``),
each of the 3 kernel update stages' (``s1..s3``), ``encode_decode``'s output at the input size
(``final``) and the auxiliary head's (``aux``), in fp32 and in fp64 (the same weights cast).
Here the weights are regenerated from the seed, exported to the mmseg layout with
``ours_to_mmseg`` and read back by the importer of ``kmax convert --from mmseg`` (strict), so a
wrong rename, a swapped tensor or a changed computation fails.

Tolerances, relative to each tensor's max |value|: fp64 1e-5 everywhere (measured <= 2e-6). fp32
(ours on one thread, as the fixtures were made; measured: decode and auxiliary heads
bit-identical, stages <= 5.4e-5): 1e-4 for the
decode head, stage 1 and the auxiliary head; 3e-4 for stages 2-3 and the final logits, where
fp32 rounding alone moves the ORIGINAL code by up to 1.5e-4 (its fp32 vs its fp64 run,
meta.json; on two threads ours reached 1.1e-4): the stages' softmax gathering of O(10²) logits
amplifies rounding.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from knet_semantic_test_utils import HEADS, PARITY_DIR, checksums, ours, photo, seeded_knet_semantic, subsample
from kmax_deeplab.checkpoints.mmseg import mmseg_to_ours, ours_to_mmseg
from kmax_deeplab.checkpoints.table import CheckpointMismatchError

KEYS = ("s0", "s1", "s2", "s3", "final", "aux")
TOL32 = {"s0": 1e-4, "s1": 1e-4, "aux": 1e-4, "s2": 3e-4, "s3": 3e-4, "final": 3e-4}


def _converted(head: str):
    model = seeded_knet_semantic(head)
    mm = ours_to_mmseg(model.state_dict())
    assert all(k.startswith(("backbone.", "decode_head.kernel_generate_head.", "decode_head.kernel_update_head.",
                             "auxiliary_head.")) for k in mm)
    from kmax_deeplab.modeling.knet_semantic import build_knet_semantic

    target = build_knet_semantic(decode_head=head)  # a fresh model to load into
    target.load_state_dict(mmseg_to_ours({k: torch.from_numpy(v) for k, v in mm.items()}, target, strict=True))
    return target.eval()


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_stage_logits_equal_the_original(head):
    gold = dict(np.load(PARITY_DIR / f"{head}.npz"))
    model = _converted(head)
    image = photo()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mine32 = ours(model, image)
    finally:
        torch.set_num_threads(threads)
    for prec, mine in (("fp32", mine32), ("fp64", ours(model.double(), image))):
        for k in KEYS:
            assert list(mine[k].shape) == gold[f"{k}.shape"].tolist(), (prec, k)
            ref = gold[f"{prec}.{k}.val"].astype(np.float64)
            scale = np.abs(ref).max()
            tol = TOL32[k] if prec == "fp32" else 1e-5
            err = np.abs(subsample(mine[k], 1000, np.float64) - ref).max() / scale
            assert err <= tol, f"{head} {prec} {k}: {err:.2e} > {tol:.0e}"
            ref_sum, my_sum = gold[f"{prec}.{k}.sum"], checksums(mine[k])
            # sum |x| and sum x² over the whole tensor (sum x cancels, so it is not compared)
            assert np.all(np.abs(my_sum[1:] - ref_sum[1:]) <= tol * np.abs(ref_sum[1:])), (prec, k)
    agree = (mine32["final"][0].argmax(0) == gold["final.argmax"]).mean()
    assert agree >= 0.999, agree


def test_fixture_records_the_measured_errors():
    meta = json.loads((PARITY_DIR / "meta.json").read_text())
    assert meta["reference"].startswith("ZwwWayne/K-Net@5e50ee5")
    for head in HEADS:
        err = meta[f"{head}_max_rel_error"]
        assert max(err["fp64"].values()) <= 1e-5
        assert all(err["fp32"][k] <= 1e-4 for k in KEYS)
        assert meta[f"{head}_argmax_agreement"] == 1.0


def test_wrong_checkpoints_refused_in_one_line():
    from kmax_deeplab.modeling.knet_semantic import build_knet_semantic

    tiny = dict(backbone="resnet_tiny", head_channels=16, updator_dim=8, ffn_dim=8, num_heads=2, aux_channels=8)
    shapes = {k: tuple(v.shape) for k, v in build_knet_semantic(decode_head="upernet", **tiny).state_dict().items()}
    fcn = {k: np.zeros(v.shape, np.float32) for k, v in
           ours_to_mmseg(build_knet_semantic(decode_head="fcn", num_classes=3, **tiny).state_dict()).items()}
    with pytest.raises(CheckpointMismatchError, match=r"holds a K-Net \+ FCN, but the model is K-Net \+ UPerNet; "
                                                      r"use model.decode_head=fcn") as e:
        mmseg_to_ours(fcn, shapes, source="x.pth")
    assert "\n" not in str(e.value)
    fcn_shapes = {k: tuple(v.shape) for k, v in build_knet_semantic(decode_head="fcn", **tiny).state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="x.pth has 3 classes, but the model has 150"):
        mmseg_to_ours(fcn, fcn_shapes, source="x.pth")
    mmdet = {"rpn_head.conv_seg.weight": np.zeros((133, 256, 1, 1), np.float32),
             "roi_head.mask_head.0.fc_cls.weight": np.zeros((133, 256), np.float32)}
    with pytest.raises(CheckpointMismatchError, match="not an mmseg K-Net semantic checkpoint.*use --from mmdet"):
        mmseg_to_ours(mmdet, shapes, source="x.pth")
    # and the other way: a semantic checkpoint into K-Net's mmdet importer
    from kmax_deeplab.checkpoints.mmdet import mmdet_to_ours

    with pytest.raises(CheckpointMismatchError, match="is not an mmdet K-Net checkpoint"):
        mmdet_to_ours(fcn, {}, source="x.pth")


def test_strict_both_directions():
    """Every mmseg tensor used and every entry of ours produced; ours -> mmseg -> ours is the identity."""
    from kmax_deeplab.modeling.knet_semantic import build_knet_semantic

    model = build_knet_semantic(backbone="resnet_tiny", decode_head="pspnet", num_classes=4, head_channels=16,
                                updator_dim=8, ffn_dim=8, num_heads=2, aux_channels=8)
    sd = model.state_dict()
    mm = ours_to_mmseg(sd)
    back = mmseg_to_ours(mm, model)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    extra = dict(mm, **{"decode_head.kernel_update_head.0.fc_cls.weight": np.zeros((4, 16), np.float32)})
    with pytest.raises(CheckpointMismatchError, match="fc_cls"):
        mmseg_to_ours(extra, model)
    missing = {k: v for k, v in mm.items() if not k.startswith("auxiliary_head.")}
    with pytest.raises(CheckpointMismatchError, match="auxiliary_head"):
        mmseg_to_ours(missing, model)
    with pytest.raises(CheckpointMismatchError, match="have no mmseg name"):
        ours_to_mmseg(dict(sd, **{"neck.foo": torch.zeros(1)}))


def test_kmax_convert_from_mmseg(tmp_path, capsys):
    """``kmax convert --from mmseg`` on an original-layout ``.pth`` gives a native folder with the same weights."""
    from kmax_deeplab.checkpoints.mmseg import save_mmseg
    from kmax_deeplab.checkpoints.native import load_native
    from kmax_deeplab.cli import main
    from kmax_deeplab.config import load_config
    from kmax_deeplab.modeling.families import family_of

    yaml = tmp_path / "tiny.yaml"
    yaml.write_text("base: ade20k/knet_r50_d8_upernet_512\nmodel: {backbone: resnet_tiny, num_classes: 4, "
                    "num_queries: 4, head_channels: 16, updator_dim: 8, ffn_dim: 8, num_heads: 2, aux_channels: 8, "
                    "norm: BN}\n")
    torch.manual_seed(0)
    model = family_of(load_config(yaml)).build_model(load_config(yaml))
    save_mmseg(model.state_dict(), tmp_path / "k.pth", meta={"CLASSES": ["a", "b", "c", "d"]})
    assert main(["convert", "--from", "mmseg", str(tmp_path / "k.pth"), str(tmp_path / "out"), "--config",
                 str(yaml)]) == 0
    cfg, sd = load_native(tmp_path / "out")
    assert cfg.model.meta_architecture == "knet_semantic" and cfg.model.decode_head == "upernet"
    assert set(sd) == set(model.state_dict()) and all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    capsys.readouterr()
    bad = yaml.with_name("fcn.yaml")
    bad.write_text(yaml.read_text().replace("upernet", "fcn"))
    assert main(["convert", "--from", "mmseg", str(tmp_path / "k.pth"), str(tmp_path / "out2"), "--config",
                 str(bad)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a K-Net + UPerNet, but the model is K-Net + FCN" in err[0], err


@pytest.mark.parametrize("config, preset", [
    ("knet_s3_fcn_r50-d8_8x2_512x512_adamw_80k_ade20k", "ade20k/knet_r50_d8_fcn_512"),
    ("knet_s3_pspnet_r50-d8_8x2_512x512_adamw_80k_ade20k", "ade20k/knet_r50_d8_pspnet_512"),
    ("knet_s3_deeplabv3_r50-d8_8x2_512x512_adamw_80k_ade20k", "ade20k/knet_r50_d8_deeplabv3_512"),
    ("knet_s3_upernet_r50-d8_8x2_512x512_adamw_80k_ade20k", "ade20k/knet_r50_d8_upernet_512_mmseg"),
    ("knet_s3_upernet_swin-t_8x2_512x512_adamw_80k_ade20k", "ade20k/knet_swin_t_upernet_512_mmseg"),
    pytest.param("knet_s3_upernet_swin-l_8x2_640x640_adamw_80k_ade20k", "ade20k/knet_swin_l_upernet_640_mmseg",
                 marks=pytest.mark.slow),
])
def test_released_mmseg_layout_converts_strictly(config, preset):
    """The zoo's released files are mmsegmentation's K-Net configs: their every key and shape
    (``tests/data/semantic/mmseg_knet_zoo_keys.json.gz``, ``tools/record_mmseg_knet_keys.py``)
    convert strictly into the zoo entry's preset (mmseg's UPerNet is 512 wide: the ``_mmseg``
    presets), and our export gives exactly that layout back (Swin: with the derived
    ``relative_position_index`` buffers)."""
    import gzip

    from kmax_deeplab.checkpoints.zoo import ZOO
    from kmax_deeplab.config import get_preset
    from kmax_deeplab.modeling.families import family_of

    with gzip.open(PARITY_DIR.parent.parent / "semantic" / "mmseg_knet_zoo_keys.json.gz", "rt") as f:
        layout = json.load(f)[config]
    cfg = get_preset(preset)
    cfg.model.norm = "BN"
    model = family_of(cfg).build_model(cfg)
    out = mmseg_to_ours({k: np.zeros(s, np.float32) for k, s in layout.items()}, model, strict=True)
    assert len(out) == len(model.state_dict())
    assert {k: list(v.shape) for k, v in ours_to_mmseg(model.state_dict()).items()} == layout
    entry = next(e for e in ZOO.values() if e.source == "mmseg" and config in e.url)
    assert entry.preset == preset and entry.metric == "mIoU" and entry.dataset == "ade20k"
