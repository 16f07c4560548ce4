"""Regenerate the deeplab2 (TensorFlow) parity fixtures in ``tests/data/parity/deeplab2/``.

What it does, per backbone (ResNet-50 and ConvNeXt-T, COCO, 129x129 canvas):

1. builds *our* model with ``reference="deeplab2"`` and the seeded, non-trivial weights of
   ``tests/_d2parity.py`` (:func:`seeded_model`), and the seeded input image;
2. exports that state dict to deeplab2's checkpoint layout with the exact inverse of our
   converter (``kmax_deeplab.checkpoints.deeplab2_tf.deeplab2_rows`` applied to index
   arrays: every TF tensor is a permutation of one of our tensors; the inverse is checked to
   be a bijection);
3. runs deeplab2's *own* kMaX-DeepLab, built from its config textproto
   (``configs/coco/kmax_deeplab/kmax_meta_{r50,convnext_tiny}_os32.textproto``; only the
   crop size, the area limits (scaled to the canvas) and plain BN instead of SyncBN are
   changed) in a TensorFlow venv (``tools/deeplab2_kmax_run.py``), restoring those
   weights through ``tf.train.Checkpoint`` (every variable consumed);
4. stores per stage the summaries of :func:`summaries` (a seeded projection over channels,
   full channel vectors at 3 pixels, argmaxes), plus deeplab2's own post-processed panoptic
   label map, and a ``meta`` JSON (reference commit, seed, canvas, versions).

The fixtures are what deeplab2 computes; our outputs are never stored. The weights are not
stored either: ``tests/test_parity_deeplab2.py`` regenerates them from the seed.

Usage (the reference checkout and its TF venv live outside the repository; see
``/work/shared/specs/running_references.md`` or ``docs/parity.md``)::

    PYTHONPATH=src:tests python tools/make_deeplab2_parity.py \\
        --deeplab2 /path/to/deeplab2-checkout/src --tf-python /path/to/tf-venv/bin/python

``--deeplab2`` is the folder that holds the ``deeplab2`` package (commit 64bc1c1, protos
compiled); ``--tf-python`` a Python with ``tensorflow-cpu`` 2.21, ``tf-keras`` 2.21,
``immutabledict``, ``PyYAML``, ``numpy``. Took about 15 minutes on the (shared, loaded) 2-core VM,
most of it TensorFlow building the two models; ``--keep DIR --reuse`` re-summarises kept TF outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import torch  # noqa: E402

from _d2parity import (  # noqa: E402
    BACKBONES, CANVAS, CLASS_HEAD_GAIN, DEEPLAB2_COMMIT, MASK_GAIN, PIXELS, PROJECTION_DIM, PROJECTION_SEED, SEED,
    seeded_image, seeded_model, summaries,
)
from kmax_deeplab.checkpoints.deeplab2_tf import IGNORED, deeplab2_rows  # noqa: E402
from kmax_deeplab.checkpoints.table import apply_rows  # noqa: E402

OUT = ROOT / "tests" / "data" / "parity" / "deeplab2"
RUNNER = ROOT / "tools" / "deeplab2_kmax_run.py"
SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def to_deeplab2_variables(state: dict[str, torch.Tensor], layout: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Our state dict -> deeplab2 TF variables (names without the suffix), by inverting the converter.

    Each TF tensor's flat indices go through the converter's transform; the result says,
    for every element of our tensor, which TF element it came from.

    Raises:
        SystemExit: the converter is not a bijection between the two layouts.
    """
    names = {n[: -len(SUFFIX)]: tuple(s) for n, s in layout.items() if n.endswith(SUFFIX)}
    index = {n: np.arange(int(np.prod(s)), dtype=np.int64).reshape(s) for n, s in names.items()}
    converted, origin, unmatched = apply_rows(index, deeplab2_rows("coco", 133), ignored=IGNORED)
    if unmatched:
        raise SystemExit(f"converter leaves TF variables unmatched: {unmatched[:5]}")
    wanted = {k for k in state if not k.endswith("num_batches_tracked")}
    if set(converted) != wanted:
        raise SystemExit(f"layout mismatch: {sorted(set(converted) ^ wanted)[:5]}")
    out = {}
    for ours, idx in converted.items():
        tf_name = origin[ours]
        flat = idx.reshape(-1)
        size = int(np.prod(names[tf_name]))
        if flat.size != size or not np.array_equal(np.sort(flat), np.arange(size)):
            raise SystemExit(f"{ours} <- {tf_name}: the converter's transform is not a permutation")
        value = np.empty(size, np.float32)
        value[flat] = state[ours].detach().numpy().astype(np.float32).reshape(-1)
        out[tf_name] = value.reshape(names[tf_name])
    return out


def tf_env(deeplab2: Path) -> dict:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(deeplab2), TF_CPP_MIN_LOG_LEVEL="2")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def make(name: str, deeplab2: Path, tf_python: str, work: Path, reuse: bool = False) -> Path:
    preset, textproto = BACKBONES[name]
    config = deeplab2 / "deeplab2" / "configs" / "coco" / "kmax_deeplab" / textproto
    tf_out = work / f"{name}_tf.npz"
    if not (reuse and tf_out.is_file()):
        env = tf_env(deeplab2)
        layout_path = work / f"{name}_layout.json"
        subprocess.run([tf_python, str(RUNNER), "variables", str(config), str(CANVAS), str(layout_path)],
                       env=env, check=True)
        model = seeded_model(name)
        variables = to_deeplab2_variables(model.state_dict(), json.loads(layout_path.read_text()))
        np.savez(work / f"{name}_weights.npz", **variables)
        image = seeded_image(SEED + 3)[0].permute(1, 2, 0).numpy()  # [H, W, 3] RGB 0..255
        np.save(work / f"{name}_image.npy", image)
        subprocess.run([tf_python, str(RUNNER), "run", str(config), str(CANVAS), str(work / f"{name}_weights.npz"),
                        str(work / f"{name}_image.npy"), str(tf_out)], env=env, check=True)
    ref = dict(np.load(tf_out))
    run_meta = json.loads(str(ref.pop("meta")))
    fixture: dict[str, np.ndarray] = {}

    def put(key: str, x: np.ndarray, **kw) -> None:
        for part, arr in summaries(x, **kw).items():
            fixture[f"{key}/{part}"] = arr

    for k in ("stage2", "stage3", "stage4", "stage5"):
        put(f"encoder/{k}", ref[f"encoder/{k}"][0])
    for k in ("decoder_stage1", "decoder_stage2", "decoder_stage3", "decoder_output"):
        put(f"pixel_decoder/{k}", ref[f"pixel_decoder/{k}"][0])
    layers = sorted({k.split("/")[0] for k in ref if k.startswith("layer")}, key=lambda s: int(s[5:]))
    for layer in layers + ["final"]:
        put(f"{layer}/class_logits", ref[f"{layer}/class_logits"][0])
        # aux layers: a 1-d projection at stride 4 (fixture size); the final output: 2-d.
        put(f"{layer}/mask_logits", ref[f"{layer}/mask_logits"][0], argmax=True,
            proj_dim=1 if layer != "final" else None)
    put("final/pixel_feature", ref["final/pixel_feature"][0])
    sem = ref["semantic_logits"][0]  # deeplab2: void (COCO label 0) at channel 0
    put("semantic_logits", np.concatenate([sem[1:], sem[:1]], 0), argmax=True)  # ours: void last
    fixture["panoptic/label_map"] = ref["panoptic/label_map"][0].astype(np.int32)
    meta = {
        "reference": "google-research/deeplab2", "commit": DEEPLAB2_COMMIT,
        "config": f"configs/coco/kmax_deeplab/{textproto}",
        "preset": preset, "seed": SEED, "image_seed": SEED + 3, "canvas": CANVAS,
        "class_head_gain": CLASS_HEAD_GAIN, "mask_gain": MASK_GAIN,
        "projection_seed": PROJECTION_SEED, "projection_dim": PROJECTION_DIM, "pixels": PIXELS,
        "thing_area_limit": run_meta["thing_area_limit"], "stuff_area_limit": run_meta["stuff_area_limit"],
        "tensorflow": run_meta["tensorflow"], "torch": torch.__version__, "num_layers": len(layers),
        "semantic_logits": "deeplab2 channel 0 (void) moved last, as our converter does",
        "aux_mask_logits": "resized to stride 4 by deeplab2's KMaXDeepLab._prepare_auxiliary_results",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.npz"
    np.savez_compressed(path, **fixture, meta=np.array(json.dumps(meta)))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deeplab2", type=Path, required=True, help="folder holding the deeplab2 package")
    p.add_argument("--tf-python", required=True, help="python of a TensorFlow venv")
    p.add_argument("--only", choices=sorted(BACKBONES), help="one backbone only")
    p.add_argument("--keep", type=Path, help="keep the intermediate files (weights, TF outputs) here")
    p.add_argument("--reuse", action="store_true",
                   help="with --keep: summarise the TF outputs already there instead of running TF again")
    args = p.parse_args()
    if not (args.deeplab2 / "deeplab2" / "model" / "kmax_deeplab.py").is_file():
        raise SystemExit(f"--deeplab2 {args.deeplab2}: no deeplab2/model/kmax_deeplab.py there")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in [args.only] if args.only else sorted(BACKBONES):
            path = make(name, args.deeplab2, args.tf_python, work, reuse=args.reuse)
            print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
