"""``kmax train``: train a model from a preset or YAML config (single process or torchrun).

The same options serve ``torchrun --nproc-per-node N -m kmax_deeplab.train`` (see
:mod:`kmax_deeplab.train`); both call :func:`kmax_deeplab.engine.build.train_from_config`.
"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Train kMaX-DeepLab. The solver's batch_size is the GLOBAL batch per optimizer step; it is
split over processes (torchrun) and solver.grad_accum_steps. Checkpoints, metrics.jsonl,
TensorBoard events and the final weights (model_final/, loadable by `kmax predict --model`)
go to the output directory. Multi-GPU: torchrun --nproc-per-node 8 -m kmax_deeplab.train
--config coco/kmax_r50 (same options)."""


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options shared by ``kmax train`` and ``python -m kmax_deeplab.train``."""
    p.add_argument("--config", required=True, metavar="PRESET_OR_YAML",
                   help="a preset name (see `kmax info`, e.g. coco/kmax_r50, synthetic/kmax_tiny) "
                        "or a YAML file (may start with `base: PRESET`)")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="run folder (default: solver.output_dir of the config)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in DIR (model, optimizer, "
                        "schedule, AMP scaler, RNG states, data position; a corrupt newer one is "
                        "skipped with a warning); starts from scratch when there is none. The "
                        "config must be the stored one (see --resume-with-changes)")
    p.add_argument("--resume-with-changes", action="append", default=[], metavar="KEYS",
                   help="with --resume: accept these config changes against the stored run "
                        "(comma-separated keys or sections, e.g. solver.max_iters or solver); "
                        "other changes of schedule, batch, model or data are refused")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the traceback of an error (also: KMAX_DEBUG=1)")
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="start a fresh run from this native checkpoint folder, e.g. an ImageNet "
                        "initialisation written by `kmax convert --from imagenet` (shortcut for "
                        "model.weights=DIR; ignored with --resume)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="dataset root (shortcut for data.root=DIR)")
    p.add_argument("--no-progress", action="store_true",
                   help="log a line every solver.log_period steps instead of a progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, after all options, e.g. solver.max_iters=1000 solver.amp=bf16 "
                        "solver.batch_size=16 model.drop_path=0.1")


def run(args: argparse.Namespace) -> int:
    """Load the config, apply overrides, train; returns the exit code."""
    from kmax_deeplab.config import load_config
    from kmax_deeplab.engine.build import train_from_config

    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={args.data_root}")
    if args.weights is not None:
        overrides.append(f"model.weights={args.weights}")
    from kmax_deeplab.engine.resume import parse_accepted
    from kmax_deeplab.errors import ConfigError

    accepted = parse_accepted(args.resume_with_changes)
    if accepted and not args.resume:
        raise ConfigError("--resume-with-changes: only valid with --resume")
    cfg = load_config(args.config, overrides)
    train_from_config(cfg, output_dir=args.output_dir, resume=args.resume,
                      progress=not args.no_progress, accept_changes=accepted)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``kmax train`` to the ``kmax`` parser."""
    p = subparsers.add_parser("train", prog="kmax train", help="train a model (CPU, one GPU or torchrun)",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.set_defaults(func=run)
