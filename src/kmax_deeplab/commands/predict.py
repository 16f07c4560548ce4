"""``kmax predict``: panoptic predictions for images and folders, in the COCO-panoptic format.

A thin layer over :class:`kmax_deeplab.engine.predictor.Predictor` and
:class:`kmax_deeplab.engine.writers.PredictionWriter`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs: Iterable[str]) -> list[Path]:
    """Expand files and folders (non-recursive, sorted; image suffixes only) into a file list.

    Raises:
        FileNotFoundError: an input path does not exist.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def _build_predictor(args: argparse.Namespace):
    from kmax_deeplab.config import load_config
    from kmax_deeplab.engine.predictor import Predictor

    kwargs = dict(device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                  compile=args.compile)
    if args.model:  # the checkpoint's own config, with the overrides applied
        if Path(args.model).is_dir():  # a native folder, e.g. a training run's model_final/
            return Predictor.from_pretrained(args.model, overrides=args.overrides, **kwargs)
        return Predictor.from_zoo(args.model, overrides=args.overrides, **kwargs)
    config = args.config
    if config is None and args.weights and Path(args.weights).is_dir():
        from kmax_deeplab.checkpoints.native import CONFIG_NAME

        config = Path(args.weights) / CONFIG_NAME  # the checkpoint's own config
    cfg = load_config(config or "coco/kmax_r50", args.overrides)
    if not args.weights:
        print("=" * 72 + "\nWARNING: no --weights or --model given: the model has RANDOM "
              "weights.\nIts predictions are meaningless; use this only to test the "
              "pipeline.\n" + "=" * 72, file=sys.stderr)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random-weights warning is above
        return Predictor.from_config(cfg, args.weights, **kwargs)


def coco_image_id(path: Path):
    """COCO image id of a file: ``int(stem)`` for numeric stems (``000000142238.jpg`` -> 142238), else the stem."""
    return int(path.stem) if path.stem.isdigit() else path.stem


def predict_files(predictor, files: Sequence[Path], output: str | Path, *, overlay: bool = True,
                  progress: bool = True, resume: bool = False, overwrite: bool = False,
                  max_pixels: int | None = None, task: str = "panoptic",
                  save_format: str = "coco", label_ids: str = "train") -> tuple[int, list[str]]:
    """Predict ``files`` and write ``<stem>.png``, ``<stem>_overlay.jpg`` and ``predictions.json``;
    with ``task="instance"`` write ``instances_results.json`` (COCO instance results:
    ``image_id``, ``category_id``, ``score``, RLE ``segmentation``) instead; with
    ``task="semantic"`` (a semantic model) ``<stem>.png`` is a label PNG with a palette
    (:class:`~kmax_deeplab.engine.semantic_writer.SemanticPredictionWriter`, ids per
    ``label_ids``: ``"train"`` or ``"dataset"``) and ``<stem>_overlay.jpg`` its colour overlay.

    Finished work is never lost (:mod:`kmax_deeplab.engine.predict_journal`): each image is
    committed to the folder's journal as soon as its files are written, and
    ``predictions.json`` is rebuilt from the journal at the end and also when the run stops
    on an error or an interruption. An image that fails for any reason (unreadable,
    truncated, more than ``max_pixels`` pixels, a failing forward pass) is reported on
    stderr, naming it, and skipped.

    Args:
        predictor: a :class:`~kmax_deeplab.engine.predictor.Predictor`.
        files: input images, in output order.
        output: the output folder (see :func:`~kmax_deeplab.engine.predict_journal.open_journal`
            for ``resume`` / ``overwrite``; a used folder is refused otherwise).
        overlay: also write ``<stem>_overlay.jpg``.
        progress: tqdm bar on stderr.
        resume: skip the images the folder's journal lists as done.
        overwrite: remove a previous run's files first.
        max_pixels: skip images with more pixels (default: Pillow's decompression-bomb limit).
        save_format: ``"coco"``, ``"cityscapes"`` or ``"npz"``
            (:class:`~kmax_deeplab.engine.writers.PredictionWriter`).

    The progress bar shows images/s, and a last line on stderr the overall rate.

    Returns:
        ``(number of images written in this call, list of error messages)``.

    Raises:
        InputError: a used output folder (without ``resume``/``overwrite``).
        OSError: the output folder cannot be written (full or read-only disk); the
            predictions finished before it are kept (journal and ``predictions.json``).
    """
    instances: list[dict] | None = [] if task == "instance" else None
    from tqdm import tqdm

    from kmax_deeplab.engine.predict_journal import open_journal
    from kmax_deeplab.engine.predictor import load_image
    from kmax_deeplab.engine.writers import PredictionWriter

    if instances is None:
        if task == "semantic":
            from kmax_deeplab.engine.semantic_writer import label_palette

            label_palette(predictor.meta, label_ids)  # a bad --label-ids fails before the folder is used
        journal = open_journal(output, predictor.meta.categories, overlay=overlay, resume=resume,
                               overwrite=overwrite)
        if task == "semantic":
            from kmax_deeplab.engine.semantic_writer import SemanticPredictionWriter

            writer = SemanticPredictionWriter(output, predictor.meta, overlay=overlay, label_ids=label_ids)
        else:
            writer = PredictionWriter(output, predictor.meta.categories, overlay=overlay,
                                      save_format=save_format)
        writer.reserve_stems(journal.stems())
        todo = [p for p in files if not journal.is_done(p)]
    else:  # instance results are one JSON, written at the end and on any stop
        journal = writer = None
        todo = list(files)
    errors: list[str] = []
    done = 0
    import time

    started = time.perf_counter()
    bar = tqdm(total=len(files), initial=len(files) - len(todo), unit=" images",
               desc="kmax predict", disable=not progress, file=sys.stderr)

    def fail(path: Path, exc: BaseException) -> None:
        from kmax_deeplab.errors import format_error

        reason = format_error(exc, "").split(": error: ", 1)[-1]
        if reason.startswith(f"{path}: "):
            reason = reason[len(f"{path}: "):]  # the path is named once
        msg = f"skipping {path}: {reason}"
        errors.append(msg)
        if journal is not None:
            journal.record_failure(path, msg)
        tqdm.write(f"kmax predict: {msg}", file=sys.stderr)
        bar.update(1)

    def predict(arrays: list) -> list:
        return predictor.predict_arrays(arrays)

    try:
        for start in range(0, len(todo), predictor.batch_size):
            chunk, arrays = [], []
            for path in todo[start:start + predictor.batch_size]:
                try:
                    arrays.append(load_image(path, max_pixels=max_pixels))
                    chunk.append(path)
                except Exception as e:  # noqa: BLE001 - any bad image is skipped, named
                    fail(path, e)
            if not arrays:
                continue
            try:
                preds = predict(arrays)
            except Exception:  # noqa: BLE001 - retry one by one to isolate the bad image
                preds = []
                for path, image in zip(list(chunk), list(arrays)):
                    try:
                        preds.append(predict([image])[0])
                    except Exception as e:  # noqa: BLE001
                        fail(path, e)
                        i = chunk.index(path)
                        del chunk[i], arrays[i]
            for path, image, pred in zip(chunk, arrays, preds):
                if instances is not None:
                    instances += [{"image_id": coco_image_id(path), "category_id": r["category_id"],
                                   "score": r["score"], "segmentation": r["segmentation"]}
                                  for r in pred["instances"]]
                else:
                    stem = writer.add(path, image, pred)  # PNG + overlay, atomically
                    journal.commit(path, stem, writer.images[-1], writer.annotations[-1])
                done += 1
                bar.update(1)
    finally:
        bar.close()
        if done and progress:
            seconds = time.perf_counter() - started
            print(f"kmax predict: {done} image(s) in {seconds:.1f} s "
                  f"({done / max(seconds, 1e-9):.2f} images/s)", file=sys.stderr)
        if journal is not None:
            journal.close()
            if journal.done:
                journal.write_predictions_json()
        if instances is not None and done:  # also when no instance was found: []
            import json

            from kmax_deeplab.fileio import atomic_path

            out = Path(output) / "instances_results.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out) as tmp:
                Path(tmp).write_text(json.dumps(instances))
    return done, errors


OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def split_overrides(positional: Sequence[str], opts: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Sort positional arguments and ``--opts`` values into ``(inputs, key=value overrides)``.

    As in ``kmax train``, overrides ``section.key=value`` may follow the images; and an
    existing image or folder given after ``--opts`` is an input again (``--opts`` used to
    swallow every path after it).
    """
    inputs, overrides = [], []
    for item in positional:
        (overrides if OVERRIDE.match(item) and not Path(item).exists() else inputs).append(item)
    for item in opts:
        (inputs if Path(item).exists() and not OVERRIDE.match(item) else overrides).append(item)
    return inputs, overrides


def run(args: argparse.Namespace) -> int:
    args.inputs, args.overrides = split_overrides(args.inputs, args.overrides)
    if not args.inputs:
        print("kmax predict: give at least one image or folder", file=sys.stderr)
        return 2
    from kmax_deeplab.config.validate import check_device

    if args.max_pixels is not None and args.max_pixels < 1:
        from kmax_deeplab.errors import ConfigError

        raise ConfigError(f"--max-pixels={args.max_pixels}: must be >= 1")
    if args.batch_size < 1:
        from kmax_deeplab.errors import ConfigError

        raise ConfigError(f"--batch-size={args.batch_size}: must be >= 1")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(args.device, "--device")
    try:
        files = collect_images(args.inputs)
    except FileNotFoundError as e:
        print(f"kmax predict: {e}", file=sys.stderr)
        return 2
    if not files:
        print("kmax predict: no images found in " + ", ".join(args.inputs), file=sys.stderr)
        return 2
    from kmax_deeplab.engine.predict_journal import check_output_folder

    if args.task == "semantic" and args.save_format != "coco":
        from kmax_deeplab.errors import ConfigError

        raise ConfigError(f"--save-format={args.save_format}: --task semantic writes label PNGs only "
                          "(see --label-ids)")
    check_output_folder(args.output, resume=args.resume, overwrite=args.overwrite)
    # Errors building the predictor (config, weights, zoo) follow the CLI error policy:
    # one line; exit code 2 for config values, 1 for unusable files.
    predictor = _build_predictor(args)
    from kmax_deeplab.modeling.families import task_of

    model_task = task_of(predictor.cfg)
    arch = predictor.cfg.model.meta_architecture
    if args.task == "semantic" and model_task != "semantic":
        print(f"kmax predict: error: --task semantic needs a semantic model (model.task 'semantic', e.g. "
              f"ade20k/knet_r50_d8_upernet_512); this {arch!r} model is {model_task!r}", file=sys.stderr)
        return 2
    if model_task == "semantic" and args.task != "semantic":
        print(f"kmax predict: error: this {arch!r} model is a semantic model (model.task 'semantic'): "
              "use --task semantic", file=sys.stderr)
        return 2
    if args.task == "instance" and getattr(predictor.cfg.model, "task", "panoptic") != "instance":
        print(f"kmax predict: error: --task instance needs an instance model (model.task 'instance', e.g. "
              f"coco/knet_r50_fpn_1x_instance); this {predictor.cfg.model.meta_architecture!r} model is "
              f"{getattr(predictor.cfg.model, 'task', 'panoptic')!r}", file=sys.stderr)
        return 2
    done, errors = predict_files(predictor, files, args.output, overlay=not args.no_overlay,
                                 progress=not args.quiet, resume=args.resume,
                                 overwrite=args.overwrite, max_pixels=args.max_pixels,
                                 task=args.task, save_format=args.save_format,
                                 label_ids=args.label_ids)
    print(f"kmax predict: wrote {done} prediction(s) to {args.output}"
          + (f"; skipped {len(errors)} unreadable file(s)" if errors else ""), file=sys.stderr)
    return 0 if (done or not errors) else 1


class _IntermixedParser(argparse.ArgumentParser):
    """Parses positionals mixed with options (``IMAGES --output DIR key=value``), as
    ``parse_intermixed_args`` does, also when reached as a sub-command."""

    _intermixed = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixed:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="panoptic predictions for images/folders (COCO-panoptic PNG + JSON)",
        description="Predict panoptic segmentations. Writes, per image, <stem>.png (COCO-panoptic "
                    "ids, id = R + 256*G + 256^2*B) and <stem>_overlay.jpg, plus one "
                    "predictions.json in the COCO-panoptic format (images, annotations with "
                    "segments_info and scores, categories). Each image is committed to "
                    "predictions.journal.jsonl as it finishes, so an interrupted run keeps its "
                    "work (--resume continues it). Unreadable, truncated or oversized files are "
                    "reported and skipped; the exit code is non-zero only when nothing could be "
                    "processed.")
    p.add_argument("inputs", nargs="*", metavar="IMAGES_OR_FOLDERS",
                   help="image files and/or folders of images (not recursive), then optionally "
                        "config overrides key=value as in kmax train, e.g. postprocess.thing_threshold=0.5")
    p.add_argument("--output", "-o", required=True, help="output folder (created if needed)")
    p.add_argument("--config", default=None,
                   help="config preset name (see `kmax info`) or YAML file; default "
                        "coco/kmax_r50, or the config inside a --weights checkpoint folder")
    p.add_argument("--weights", default=None,
                   help="native checkpoint folder (model.safetensors + config.yaml) or a "
                        ".safetensors file with our key names")
    p.add_argument("--model", default=None,
                   help="model-zoo name (downloaded, converted and cached; see the README's "
                        "model zoo table) or a native checkpoint folder such as a training "
                        "run's model_final/")
    p.add_argument("--opts", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides (or give key=value after the images, as in kmax train), "
                        "e.g. --opts postprocess.thing_threshold=0.5; applied to the checkpoint's "
                        "config with --model too")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast dtype of the forward pass (post-processing is fp32)")
    p.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    p.add_argument("--no-overlay", action="store_true", help="do not write <stem>_overlay.jpg")
    p.add_argument("--task", choices=("panoptic", "instance", "semantic"), default="panoptic",
                   help="panoptic: PNG + predictions.json; instance: instances_results.json (COCO instance "
                        "results with RLE masks; needs an instance model, e.g. coco/knet_r50_fpn_1x_instance); "
                        "semantic: <stem>.png label PNGs with the dataset palette + overlays (needs a semantic "
                        "model, model.task 'semantic'; whole/slide/flip/scales from the config's test settings), "
                        "readable by kmax evaluate --task semantic")
    p.add_argument("--label-ids", choices=("train", "dataset"), default="train",
                   help="--task semantic: values of the label PNGs: train ids 0..C-1 (default; what kmax "
                        "evaluate --task semantic --reduce-zero-label compares with ADE20K annotations) or the "
                        "dataset's own ids (ADE20K: train id + 1; Cityscapes label ids; COCO category ids)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--save-format", choices=("coco", "cityscapes", "npz"), default="coco",
                   help="coco: <stem>.png ids + predictions.json (default); cityscapes: also "
                        "<stem>_labelIds.png and <stem>_pred.txt + instance masks "
                        "(cityscapesScripts result files); npz: <stem>.npz (panoptic + "
                        "segments arrays) instead of the PNG")
    p.add_argument("--resume", action="store_true",
                   help="continue the run recorded in the output folder's "
                        "predictions.journal.jsonl (finished images are skipped)")
    p.add_argument("--overwrite", action="store_true",
                   help="remove the files of a previous run in the output folder first "
                        "(without --resume or --overwrite a non-empty output folder is refused)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="skip images with more than N pixels (width x height) before decoding "
                        "them (default: 89478485, Pillow's decompression-bomb limit)")
    p.__class__ = _IntermixedParser  # images and key=value overrides may follow the options
    p.set_defaults(func=run)
