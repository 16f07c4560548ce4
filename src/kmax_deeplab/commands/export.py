"""``kmax export``: the network to ONNX or to a ``torch.export`` program.

A thin layer over :func:`kmax_deeplab.engine.export.export_model`; the exported file is read
back by ``Predictor`` through :func:`kmax_deeplab.engine.export.load_exported`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def build_model(model: str | None, config: str | None, overrides=()):
    """``(network, cfg)`` of a zoo name or native folder, or of a config with random weights.

    Raises:
        FileNotFoundError / ValueError / KeyError: unknown model or config, unreadable weights.
    """
    from kmax_deeplab.engine.predictor import Predictor

    if model:
        predictor = (Predictor.from_pretrained(model) if Path(model).is_dir()
                     else Predictor.from_zoo(model))
    else:
        from kmax_deeplab.config import load_config

        cfg = load_config(config, overrides)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            predictor = Predictor.from_config(cfg)
    return predictor.model, predictor.cfg


def run(args: argparse.Namespace) -> int:
    if not args.model and not args.config:
        print("kmax export: give --model NAME_OR_DIR (or --config PRESET for random weights)",
              file=sys.stderr)
        return 2
    from kmax_deeplab.engine.export import export_model

    try:
        model, cfg = build_model(args.model, args.config, args.overrides)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"kmax export: {e}", file=sys.stderr)
        return 2
    if not args.model:
        print("kmax export: WARNING: no --model given, exporting RANDOM weights", file=sys.stderr)
    try:
        info = export_model(model, cfg, args.output, args.format, max_batch=args.max_batch)
    except (ValueError, RuntimeError) as e:
        print(f"kmax export: {args.format} export failed: {e}", file=sys.stderr)
        return 1
    hc, wc = cfg.model.image_size
    print(f"kmax export: wrote {info['path']} ({info['bytes'] / 2**20:.1f} MiB, "
          f"{info['seconds']:.1f} s; input images [B<={args.max_batch}, 3, {hc}, {wc}])",
          file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export the network to ONNX or a torch.export program (.pt2)",
        description="Export the network (backbone + heads at the model canvas, dynamic batch) to "
                    "ONNX (opset 18, runs in onnxruntime) or a torch.export program. The config "
                    "is stored in the file; post-processing stays in Python "
                    "(kmax_deeplab.engine.export.load_exported gives a Predictor).")
    p.add_argument("--format", choices=("onnx", "torch-export"), required=True)
    p.add_argument("--model", default=None,
                   help="model-zoo name or native checkpoint folder (model.safetensors + config.yaml)")
    p.add_argument("--config", default=None,
                   help="config preset or YAML instead of --model: RANDOM weights (for tests)")
    p.add_argument("--opts", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides with --config, e.g. model.image_size=[641,641]")
    p.add_argument("--output", "-o", required=True, help="output file (.onnx or .pt2)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the export accepts")
    p.set_defaults(func=run)
