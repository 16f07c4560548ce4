"""``kmax convert``: foreign checkpoints -> the native format (safetensors + config.yaml).

A thin layer over :func:`kmax_deeplab.checkpoints.zoo.convert_file`.
"""

from __future__ import annotations

import argparse

_EPILOG = """examples:
  kmax convert --from deeplab2 kmax_resnet50_coco_train/ ./kmax_r50_coco --config coco/kmax_r50_deeplab2
  kmax convert --from deeplab2 kmax_convnext_tiny_coco_train/ ./kmax_cnt_coco --config coco/kmax_convnext_tiny_deeplab2
  kmax convert --from detectron2 kmax_r50.pth ./kmax_r50_coco_bd --config coco/kmax_r50
  kmax convert --from imagenet convnext_tiny_22k_1k_384.pth ./init --config coco/kmax_convnext_tiny
  kmax convert --from imagenet max_deeplab_s_backbone_imagenet1k_strong_training_strategy/ ./init_max_s --config coco/max_deeplab_s_641
then: kmax predict IMAGES... -o preds/ --weights ./kmax_r50_coco
"""


def run(args: argparse.Namespace) -> int:
    from kmax_deeplab.checkpoints.zoo import convert_file

    # Errors (bad file, refused pickle, CRC mismatch, existing output) follow the CLI
    # error policy of kmax_deeplab.errors: one line, exit code 1.
    out = convert_file(args.src, args.dst, source=args.source, preset=args.config, strict=not args.non_strict)
    print(f"wrote {out}")
    return 0


def _importer_list() -> str:
    from kmax_deeplab.modeling.families import FAMILIES

    return "; ".join(f"{name}: {', '.join(sorted(f.importers))}" for name, f in sorted(FAMILIES.items()))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", prog="kmax convert", help="convert official/foreign checkpoints to the native format",
        description="Convert a deeplab2 (TensorFlow), bytedance detectron2 or ImageNet-backbone checkpoint "
                    "into a native folder (model.safetensors + config.yaml). Strict by default: every "
                    "checkpoint tensor must be used and every model entry produced.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                   help="checkpoint layout, one of the model family's importers (" + _importer_list() + "). "
                        "kMaX: deeplab2 = TF prefix, .index file or unpacked archive folder; "
                        "detectron2 = bytedance/COCONut .pth or .pkl; imagenet = torchvision/detectron2 R-50 "
                        "or FB/timm ConvNeXt backbone file (only the backbone is set); MaX-DeepLab: imagenet = deeplab2's "
                        "max_deeplab_{s,l}_backbone TF checkpoint (the ImageNet-pretrained encoder part is set)")
    p.add_argument("src", help="checkpoint file, TF checkpoint prefix, or folder holding one TF checkpoint")
    p.add_argument("dst", help="output folder (must not exist; written atomically)")
    p.add_argument("--config", required=True,
                   help="config preset (see `kmax info`) or YAML file of the model the weights belong to, "
                        "e.g. coco/kmax_r50_deeplab2; with --from deeplab2 the result always has "
                        "model.reference=deeplab2 (deeplab2's network)")
    p.add_argument("--non-strict", action="store_true",
                   help="allow leftover or missing entries (shapes must still match); for debugging only")
    p.set_defaults(func=run)
