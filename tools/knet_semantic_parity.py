"""Regenerate the semantic K-Net parity fixtures in ``tests/data/parity/knet_semantic/`` from the original code.

What it does (nothing here runs at test time; the tests only read the fixtures):

1. builds our K-Net + UPerNet R-50 and K-Net + FCN R-50-D8 (ADE20K, 150 classes;
   ``tests/knet_semantic_test_utils.seeded_knet_semantic``: seed 0, randomised biases, norms
   and BN statistics) and writes each in the original layout with
   ``kmax_deeplab.checkpoints.mmseg.save_mmseg`` (``{"state_dict", "meta"}``, like the released
   ``.pth`` files);
2. converts that file with ``kmax convert --from mmseg`` and checks the native folder holds
   exactly our weights;
3. runs the ORIGINAL semantic K-Net (ZwwWayne/K-Net @5e50ee5 ``knet/seg`` with mmseg 0.30.0,
   mmcv 1.7.2 without compiled ops; the state dict loaded with ``strict=True``) through
   ``REF_DIR/run_ref.py`` in ``REF_PYTHON`` on the bundled COCO photo resized to 64x96,
   normalised with mmseg's ``img_norm_cfg``: the decode head's logits, each update stage's,
   ``EncoderDecoder.encode_decode`` (resized to the input) and the auxiliary head's, in fp32
   and (the same weights cast) in fp64;
4. compares ours with the reference's on the FULL tensors and prints the errors;
5. stores subsampled reference tensors + float64 checksums + the final argmax
   (``{head}.npz``) and ``meta.json``.

usage (from the repository root, with the project venv):
    PYTHONPATH=src python tools/knet_semantic_parity.py --ref-dir /work/refs/knetsem \
        --ref-python /work/refs/venv-knet/bin/python [--out tests/data/parity/knet_semantic]

The reference environment (outside the repository): the venv of ``tools/knet_parity.py`` plus
``mmsegmentation==0.30.0 --no-deps``; K-Net's ``knet/seg`` classes re-registered over mmseg's
clashing names, and ``IterativeDecodeHead.out_channels`` set to the generate head's (mmseg 0.30's
``EncoderDecoder`` reads it; K-Net's head predates it and skips ``BaseDecodeHead.__init__``).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from knet_semantic_test_utils import (  # noqa: E402
    HEADS, IMAGE_SIZE, MEAN, PHOTO, STD, checksums, ours, photo, seeded_knet_semantic, subsample)

from kmax_deeplab.checkpoints.mmseg import save_mmseg  # noqa: E402

REF_COMMIT = "ZwwWayne/K-Net@5e50ee5 (knet/seg), mmsegmentation 0.30.0, mmcv 1.7.2"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-dir", default="/work/refs/knetsem")
    ap.add_argument("--ref-python", default="/work/refs/venv-knet/bin/python")
    ap.add_argument("--out", default=str(REPO / "tests/data/parity/knet_semantic"))
    a = ap.parse_args()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = photo()
    normalised = ((torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() - torch.tensor(MEAN).view(1, 3, 1, 1))
                  / torch.tensor(STD).view(1, 3, 1, 1)).numpy()
    meta: dict = {"reference": REF_COMMIT, "photo": PHOTO.name, "image_size": IMAGE_SIZE, "torch": torch.__version__,
                  "seed": 0}
    for head in HEADS:
        model = seeded_knet_semantic(head)
        with tempfile.TemporaryDirectory() as tmp:
            pth = Path(tmp) / f"knet_{head}_seed0.pth"
            save_mmseg(model.state_dict(), pth, meta={"kmax_deeplab": "seeded test weights", "decode_head": head})
            native = Path(tmp) / "native"
            subprocess.run([sys.executable, "-m", "kmax_deeplab.cli", "convert", "--from", "mmseg", str(pth),
                            str(native), "--config", f"ade20k/knet_r50_d8_{head}_512"], check=True)
            from kmax_deeplab.checkpoints.native import load_native

            back = load_native(native)[1]
            mine_sd = model.state_dict()
            assert set(back) == set(mine_sd) and all(torch.equal(back[k], mine_sd[k]) for k in mine_sd), \
                "kmax convert --from mmseg changed the weights"
            inp = Path(tmp) / "in.npz"
            np.savez(inp, image=normalised)
            refs = {}
            for prec in ("fp32", "fp64"):
                res = Path(tmp) / f"out_{prec}.npz"
                subprocess.run([a.ref_python, str(Path(a.ref_dir) / "run_ref.py"), "--kind", head, "--pth", str(pth),
                                "--input", str(inp), "--out", str(res)] + (["--double"] if prec == "fp64" else []),
                               check=True, cwd=a.ref_dir)
                refs[prec] = dict(np.load(res))
        torch.set_num_threads(1)  # as the reference and the test
        mine = {"fp32": ours(model, image), "fp64": ours(model.double(), image)}
        golden: dict[str, np.ndarray] = {}
        errors: dict = {"fp32": {}, "fp64": {}, "ref_fp32_vs_ref_fp64": {}}
        for prec in ("fp32", "fp64"):
            for k in ("s0", "s1", "s2", "s3", "final", "aux"):
                r = refs[prec][k]
                assert mine[prec][k].shape == r.shape, (k, mine[prec][k].shape, r.shape)
                errors[prec][k] = float(np.abs(mine[prec][k] - r).max() / max(np.abs(r).max(), 1e-12))
                golden[f"{prec}.{k}.val"] = subsample(r, 1000, np.float32 if prec == "fp32" else np.float64)
                golden[f"{prec}.{k}.sum"], golden[f"{k}.shape"] = checksums(r), np.array(r.shape)
                if prec == "fp64":
                    r32 = refs["fp32"][k]
                    errors["ref_fp32_vs_ref_fp64"][k] = float(np.abs(r32 - r).max() / np.abs(r).max())
        golden["final.argmax"] = refs["fp32"]["final"][0].argmax(0).astype(np.uint8)
        agree = float((mine["fp32"]["final"][0].argmax(0) == golden["final.argmax"]).mean())
        print(head, "max |ours - ref| / max |ref|:", json.dumps(errors), "argmax agreement", agree)
        meta[f"{head}_max_rel_error"] = errors
        meta[f"{head}_argmax_agreement"] = agree
        np.savez_compressed(out_dir / f"{head}.npz", **golden)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("wrote", out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
