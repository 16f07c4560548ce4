"""Regenerate ``tests/data/parity/bytedance/``: bytedance kMaX-DeepLab's own outputs, per stage,
for weights that our code generates from a seed (``tests/bytedance_parity.py``).

What it does, per case of ``bytedance_parity.CASES``: builds our model at the case canvas with
seeded, BN-calibrated weights; exports them with ``ours_to_bd``; builds bytedance's
``kMaXDeepLab`` meta-architecture from bytedance's own YAML config (``INPUT.IMAGE_SIZE`` set to
the canvas), loads the weights strictly, runs its eval-mode inference on the case image
(``batched_inputs`` with ``height``/``width`` = the case's original size) and records the backbone
endpoints, each pixel-decoder stage, each transformer layer's class/mask logits and pixel features,
the final outputs, the eval-mode aux semantic logits and the panoptic result.

Requirements (nothing of it is in this repository):

1. A checkout of github.com/bytedance/kmax-deeplab at commit f8e1d04 (``--reference``).
2. Stand-ins for the few detectron2/fvcore/timm names its modeling code imports
   (``--stand-ins``, a folder put first on ``sys.path``), written for this purpose:
   ``detectron2.config`` (``CfgNode`` with ``merge_from_file`` following ``_BASE_``, and
   ``configurable``, which calls ``from_config`` when the first argument is a ``CfgNode``),
   ``detectron2.layers`` (``ShapeSpec``, ``Conv2d`` = conv + optional ``norm`` and
   ``activation``, ``CNNBlockBase``, ``DeformConv``/``ModulatedDeformConv`` placeholders),
   ``detectron2.modeling`` (``BACKBONE_REGISTRY``, ``SEM_SEG_HEADS_REGISTRY``,
   ``META_ARCH_REGISTRY``, ``build_backbone``, ``build_sem_seg_head``, ``Backbone``,
   ``postprocessing.sem_seg_postprocess``), ``detectron2.structures.ImageList.from_tensors``,
   ``detectron2.data.MetadataCatalog``, ``detectron2.utils.{registry.Registry, memory.retry_if_cuda_oom,
   comm}``, ``fvcore.nn.weight_init.c2_msra_fill`` and ``timm.models.layers.{DropPath,
   trunc_normal_tf_}`` (initialisers only matter before the weights are overwritten).
3. torch (the repository's venv is fine).

bytedance's package ``__init__`` (datasets, evaluation) is bypassed: its folder is mounted as the
package ``bd_kmax``. Its ``nn.SyncBatchNorm`` layers are swapped for plain batch norms with the same
parameters (same keys, same eval maths) so that it runs without a process group.

    PYTHONPATH=src OMP_NUM_THREADS=1 python tools/make_bytedance_parity.py \\
        --reference /path/to/kmax-deeplab --stand-ins /path/to/stand-ins [--cases NAME ...]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

import bytedance_parity as bp  # noqa: E402
from kmax_deeplab.checkpoints.detectron2 import ours_to_bd  # noqa: E402
from kmax_deeplab.data.catalog import get_dataset_meta  # noqa: E402

OUT = REPO / "tests" / "data" / "parity" / "bytedance"


class _PlainBN(nn.modules.batchnorm._BatchNorm):
    """A batch norm for any input rank (BD applies its SyncBN to 2-D, 3-D and 4-D tensors)."""

    def _check_input_dim(self, input):  # noqa: A002 - torch's signature
        pass


def _swap_sync_bn(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            setattr(module, name, _PlainBN(child.num_features, eps=child.eps, momentum=child.momentum))
        else:
            _swap_sync_bn(child)


def _import_bytedance(reference: Path, stand_ins: Path):
    sys.path.insert(0, str(stand_ins))
    pkg = types.ModuleType("bd_kmax")
    pkg.__path__ = [str(reference / "kmax_deeplab")]
    sys.modules["bd_kmax"] = pkg
    config = importlib.import_module("bd_kmax.config")
    importlib.import_module("bd_kmax.modeling")
    importlib.import_module("bd_kmax.kmax_model")
    return config


def _bd_cfg(reference: Path, config_module, case: str):
    from detectron2.config import CfgNode as CN

    # detectron2's own defaults for the keys BD's builders read and its YAML files leave out.
    cfg = CN({
        "MODEL": {"BACKBONE": {"NAME": "", "FREEZE_AT": 2},
                  "RESNETS": {"DEPTH": 50, "OUT_FEATURES": ["res4"], "NUM_GROUPS": 1, "NORM": "FrozenBN",
                              "WIDTH_PER_GROUP": 64, "STRIDE_IN_1X1": True, "RES5_DILATION": 1,
                              "RES2_OUT_CHANNELS": 256, "STEM_OUT_CHANNELS": 64,
                              "DEFORM_ON_PER_STAGE": [False] * 4, "DEFORM_MODULATED": False,
                              "DEFORM_NUM_GROUPS": 1},
                  "SEM_SEG_HEAD": {}, "PIXEL_MEAN": [103.53, 116.28, 123.675],
                  "PIXEL_STD": [1.0, 1.0, 1.0]},
        "INPUT": {}, "SOLVER": {}, "DATASETS": {}, "TEST": {"DETECTIONS_PER_IMAGE": 100},
    })
    config_module.add_kmax_deeplab_config(cfg)
    cfg.merge_from_file(str(reference / bp.CASES[case]["bd_config"]))
    cfg.INPUT.IMAGE_SIZE = list(bp.CASES[case]["canvas"])
    return cfg


def _git_commit(reference: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(reference), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


@torch.no_grad()
def run_case(case: str, reference: Path, config_module) -> tuple[dict, dict]:
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import META_ARCH_REGISTRY

    spec = bp.CASES[case]
    ours = bp.build_seeded_model(case)
    image = bp.case_image(case)
    cfg = _bd_cfg(reference, config_module, case)
    meta = get_dataset_meta(bp.model_config(case).data.dataset)
    # BD's panoptic inference asks the dataset metadata which contiguous ids are things.
    things = sorted(meta.thing_train_ids)
    MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_dataset_id_to_contiguous_id = {t: t for t in things}

    bd = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    _swap_sync_bn(bd)
    state = {k: torch.from_numpy(v) for k, v in ours_to_bd(ours.state_dict()).items()}
    missing, unexpected = bd.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("criterion.")]
    if missing or unexpected:
        raise RuntimeError(f"{case}: BD state dict mismatch: missing {missing[:10]}, unexpected {unexpected[:10]}")
    bd.eval()

    captured: dict = {"stages": {}}
    bd.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("backbone", dict(o)))
    for i, stage in enumerate(bd.sem_seg_head.pixel_decoder._stages):
        stage.register_forward_hook(lambda m, inp, o, i=i: captured["stages"].__setitem__(i, o))
    bd.sem_seg_head.register_forward_hook(lambda m, i, o: captured.__setitem__("head", o))

    fh, fw = spec["fed"]
    oh, ow = spec["original"]
    result = bd([{"image": image[0, :, :fh, :fw].clone(), "height": oh, "width": ow}])[0]

    feats = captured["backbone"]
    predictor = bd.sem_seg_head.predictor
    semantic = None
    if getattr(predictor, "_add_aux_semantic_pred", False):
        if predictor._use_aux_semantic_decoder:
            semantic = predictor._auxiliary_semantic_predictor(
                x=feats["res5"], low_features_os8=feats["res3"], low_features_os4=feats["res2"])
        else:
            semantic = predictor._auxiliary_semantic_predictor(feats["res5"])
    stages = bp.collect_stages(captured["head"], feats,
                               [captured["stages"][i] for i in range(len(captured["stages"]))], semantic)
    kinds = bp.stage_kinds(len(captured["head"]["aux_outputs"]), list(feats), len(captured["stages"]),
                           semantic is not None)
    if list(kinds) != list(stages):
        raise RuntimeError(f"{case}: recorded stages {list(stages)} != expected {list(kinds)}")
    arrays, shapes = bp.pack({name: bp.summarise(stages[name], kind) for name, kind in kinds.items()})
    pan, segments = result["panoptic_seg"]
    arrays["panoptic/map"] = pan.cpu().numpy().astype(np.int32)
    info = {
        "case": case, **{k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
        "bd_crop": list(bp.bd_crop(case)),
        "stages": [[name, kind] for name, kind in kinds.items()],  # network order
        "shapes": shapes,
        "segments_info": [{"id": int(s["id"]), "category_id": int(s["category_id"]),
                           "isthing": bool(s["isthing"])} for s in segments],
        "bd_postprocess": {k: cfg.MODEL.KMAX_DEEPLAB.TEST[k] for k in (
            "PIXEL_CONFIDENCE_THRESHOLD", "CLASS_THRESHOLD_THING", "CLASS_THRESHOLD_STUFF",
            "REORDER_CLASS_WEIGHT", "REORDER_MASK_WEIGHT", "OVERLAP_THRESHOLD")},
        "bd_thing_train_ids": things,
    }
    return arrays, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help="bytedance/kmax-deeplab checkout (f8e1d04)")
    ap.add_argument("--stand-ins", type=Path, required=True, help="folder with the detectron2/fvcore/timm stand-ins")
    ap.add_argument("--output", type=Path, default=OUT)
    ap.add_argument("--cases", nargs="+", default=list(bp.CASES), choices=list(bp.CASES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    config_module = _import_bytedance(args.reference.resolve(), args.stand_ins.resolve())
    commit = _git_commit(args.reference)
    if commit != bp.REFERENCE_COMMIT:
        # An extracted archive has no git metadata: compare it with `git archive f8e1d04` yourself.
        print(f"warning: reference commit {commit}; the fixtures record {bp.REFERENCE_COMMIT}", file=sys.stderr)
    args.output.mkdir(parents=True, exist_ok=True)
    meta_path = args.output / "metadata.json"
    metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {"cases": {}}
    metadata.update({
        "reference": "github.com/bytedance/kmax-deeplab", "reference_commit": bp.REFERENCE_COMMIT,
        "seed": bp.SEED, "samples_per_tensor": bp.NUM_SAMPLES,
        "generated_by": "tools/make_bytedance_parity.py", "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    })
    for case in args.cases:
        arrays, info = run_case(case, args.reference, config_module)
        np.savez_compressed(args.output / f"{case}.npz", **arrays)
        metadata["cases"][case] = info
        print(f"{case}: {len(info['stages'])} stages, {len(info['segments_info'])} segments, "
              f"{(args.output / f'{case}.npz').stat().st_size / 1024:.0f} kB")
    meta_path.write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
