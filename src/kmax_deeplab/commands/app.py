"""``kmax app``: the Gradio web demo on this machine (a thin layer over :mod:`kmax_deeplab.app`)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def make_choices(args: argparse.Namespace):
    """The :class:`~kmax_deeplab.app.ModelChoices` of the command line options."""
    from kmax_deeplab.app import ModelChoices
    from kmax_deeplab.engine.predictor import Predictor

    initial = {}
    for name in args.model or []:
        if Path(name).is_dir():
            initial[f"{name} (folder)"] = (lambda n=name: Predictor.from_pretrained(n, device=args.device))
        else:
            initial[name] = (lambda n=name: Predictor.from_zoo(n, device=args.device))
    if args.config:
        def random_model(cfg_name=args.config):
            import torch

            from kmax_deeplab.config import load_config

            torch.manual_seed(args.seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return Predictor.from_config(load_config(cfg_name), device=args.device)
        initial[f"{args.config} (RANDOM weights)"] = random_model
    return ModelChoices(initial=initial, zoo=not args.no_zoo, device=args.device)


def run(args: argparse.Namespace) -> int:
    from kmax_deeplab.app import build_demo

    try:
        demo = build_demo(make_choices(args), max_side=args.max_side)
    except ImportError as e:
        print(f"kmax app: {e}", file=sys.stderr)
        return 2
    print(f"kmax app: serving on http://{args.host}:{args.port} (Ctrl+C stops)", file=sys.stderr)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                        inbrowser=False, show_error=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "app", help="web demo (Gradio): upload a photo, see its panoptic segmentation",
        description="Start the Gradio web demo: upload or pick a bundled photo, choose a model "
                    "(zoo name, native folder, the `kmax demo` model), see the overlay, legend "
                    "and semantic map, move threshold sliders (only the post-processing "
                    "re-runs) and download the panoptic PNG and COCO-panoptic JSON. Needs "
                    "`pip install 'kmax-deeplab[app]'`; no internet unless a zoo model is "
                    "downloaded.")
    p.add_argument("--model", action="append", default=None, metavar="NAME_OR_DIR",
                   help="zoo name or native folder offered first (repeatable)")
    p.add_argument("--config", default=None,
                   help="also offer this preset with RANDOM weights (seeded by --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --config random weights")
    p.add_argument("--no-zoo", action="store_true", help="do not list the model-zoo names")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", type=_bool, default=False, metavar="true|false",
                   help="ask Gradio for a public share link (needs internet; default false)")
    p.add_argument("--device", default="cpu", help="torch device of the models")
    p.add_argument("--max-side", type=int, default=2048,
                   help="uploads with a longer side are downscaled to it first (with a note)")
    p.set_defaults(func=run)
