"""Build a training run from a :class:`~kmax_deeplab.config.Config` and run it.

This is the wiring of the real parts around :class:`~kmax_deeplab.engine.trainer.Trainer`:
the model, criterion, optimizer and schedule of the config's model family (its row in
:data:`kmax_deeplab.modeling.families.FAMILIES`), the COCO-panoptic datasets with the
training / test transforms, ``collate_panoptic``, targets at the family's mask stride from
``prepare_targets`` and the in-memory PQ validation. ``kmax train`` and
``torchrun -m kmax_deeplab.train`` both call :func:`train_from_config`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from kmax_deeplab.engine.distributed import DistInfo, cleanup_distributed, init_distributed
from kmax_deeplab.engine.logging import setup_console_logging

logger = logging.getLogger("kmax_deeplab.train")

# Default output stride of the supervised mask logits (kMaX: 4, spec §4); a family declares its own.
MASK_STRIDE = 4


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_prepare_batch(num_classes: int, stride: int = MASK_STRIDE,
                       **weighting: Any) -> Callable[[Any, torch.device], tuple[Tensor, Any]]:
    """Return ``batch -> (images [B,3,H,W] on device, stride-4 targets on device)``.

    ``weighting``: ``small_instance_threshold``, ``small_instance_weight``, ``thing_classes``
    (deeplab2's small-instance semantic weight, :func:`kmax_deeplab.data.targets.prepare_image_targets`).
    """
    from kmax_deeplab.data.targets import prepare_targets

    def prepare(batch: Any, device: torch.device) -> tuple[Tensor, Any]:
        images = batch["images"].to(device, non_blocking=True)
        return images, prepare_targets(batch["targets"], num_classes, stride=stride, device=device, **weighting)

    return prepare


def small_instance_weighting(cfg: Any) -> dict[str, Any]:
    """``prepare_targets`` options of ``data.small_instance_weight`` / ``_threshold`` ({} when the weight is 1).

    Thing classes come from the dataset catalog (deeplab2: ``class_has_instances_list``).
    """
    if float(getattr(cfg.data, "small_instance_weight", 1.0)) == 1.0:
        return {}
    from kmax_deeplab.data.catalog import get_dataset_meta

    return dict(small_instance_weight=float(cfg.data.small_instance_weight),
                small_instance_threshold=int(cfg.data.small_instance_threshold),
                thing_classes=sorted(get_dataset_meta(cfg.data.dataset).thing_train_ids))


def build_dataset(cfg: Any, split: str, *, is_train: bool | None = None) -> Any:
    """The ``train`` or ``val`` split of ``cfg.data`` as a ``COCOPanopticDataset``.

    The transforms are those of the model family's input geometry (kMaX: large-scale jitter
    crops of ``data.crop_size``; resize + pad at test time).

    Raises:
        FileNotFoundError / PanopticDataError: missing or malformed dataset files (named).
    """
    from kmax_deeplab.data.catalog import get_dataset_meta
    from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
    from kmax_deeplab.modeling.families import family_of, task_of

    d = cfg.data
    root = Path(d.root)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if task_of(cfg) == "semantic":
        return build_semantic_dataset(cfg, split, is_train=is_train)
    image_dir, json_file, pan_dir = (getattr(d, f"{split}_image_dir"), getattr(d, f"{split}_json"),
                                     getattr(d, f"{split}_panoptic_dir"))
    train = split == "train" if is_train is None else is_train
    return COCOPanopticDataset(root / image_dir, root / json_file, root / pan_dir,
                               get_dataset_meta(d.dataset),
                               transforms=family_of(cfg).input_geometry(cfg).transforms(d, is_train=train),
                               on_bad_sample=d.on_bad_sample)


def build_semantic_dataset(cfg: Any, split: str, *, is_train: bool | None = None) -> Any:
    """The ``train`` or ``val`` split of a semantic model's ``cfg.data``.

    ``data.dataset == "ade20k"``: :class:`~kmax_deeplab.data.semantic.ADE20KSemanticDataset`
    under ``data.root`` (``images/`` + ``annotations/``, ``reduce_zero_label``); any other
    dataset: its COCO-panoptic layout read as semantic labels
    (:class:`~kmax_deeplab.data.panoptic_semantic.PanopticSemanticDataset`, train ids, void 255).
    The transforms are the family geometry's (training: mmseg's pipeline).

    Raises:
        FileNotFoundError / SemanticDataError / PanopticDataError: missing or malformed files (named).
    """
    from kmax_deeplab.data.catalog import get_dataset_meta
    from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
    from kmax_deeplab.data.panoptic_semantic import PanopticSemanticDataset
    from kmax_deeplab.data.semantic import ADE20KSemanticDataset
    from kmax_deeplab.modeling.families import family_of

    d = cfg.data
    train = split == "train" if is_train is None else is_train
    transforms = family_of(cfg).input_geometry(cfg).transforms(d, is_train=train)
    seed = int(getattr(cfg.solver, "seed", 0))
    if d.dataset == "ade20k":
        return ADE20KSemanticDataset(d.root, "training" if split == "train" else "validation",
                                     transforms=transforms, seed=seed)
    root = Path(d.root)
    pan = COCOPanopticDataset(root / getattr(d, f"{split}_image_dir"), root / getattr(d, f"{split}_json"),
                              root / getattr(d, f"{split}_panoptic_dir"), get_dataset_meta(d.dataset),
                              on_bad_sample=d.on_bad_sample)
    return PanopticSemanticDataset(pan, transforms=transforms, seed=seed)


@dataclass
class TrainingParts:
    """What :func:`build_training` returns: every argument of :class:`Trainer`."""

    model: nn.Module
    criterion: nn.Module
    train_dataset: Any
    collate_fn: Callable[[list[Any]], Any]
    prepare_batch: Callable[[Any, torch.device], tuple[Tensor, Any]]
    evaluate_fn: Any  # PanopticValidation or None
    optimizer_factory: Callable[[nn.Module], Any] | None = None
    scheduler_factory: Callable[[Any], Any] | None = None


def build_training(cfg: Any, *, eval_max_images: int | None = None, with_eval: bool = True) -> TrainingParts:
    """Build model, criterion, datasets, collate and validation from ``cfg``.

    The model is built under the current RNG state; call :func:`seed_everything` first
    so that every rank builds identical weights.
    """
    from kmax_deeplab.engine.validation import PanopticValidation, SemanticValidation
    from kmax_deeplab.modeling.families import family_of, task_of

    family = family_of(cfg)
    family.check_config(cfg)
    model = family.build_model(cfg)
    criterion = family.build_criterion(cfg)
    train_ds = build_dataset(cfg, "train")
    evaluate = None
    if with_eval and task_of(cfg) == "semantic":  # mIoU of the untransformed val samples
        evaluate = SemanticValidation(cfg, build_dataset(cfg, "val", is_train=False), max_images=eval_max_images)
    elif with_eval:
        evaluate = PanopticValidation(cfg, build_dataset(cfg, "val"), max_images=eval_max_images)
    collate = family.input_geometry(cfg).collate(cfg.model.num_classes)
    if family.full_resolution_targets:
        from kmax_deeplab.engine.trainer import default_prepare_batch as prepare
    else:
        prepare = make_prepare_batch(cfg.model.num_classes, family.mask_stride, **small_instance_weighting(cfg))
    return TrainingParts(model, criterion, train_ds, collate, prepare, evaluate,
                         optimizer_factory=lambda m: family.build_optimizer(m, cfg),
                         scheduler_factory=lambda opt: family.build_scheduler(opt, cfg))


def export_final_weights(cfg: Any, model: nn.Module, output_dir: Path, iteration: int) -> Path:
    """Write ``output_dir/model_final`` (native safetensors + config; ``kmax predict --model``)."""
    from kmax_deeplab.checkpoints.native import save_native

    return save_native(output_dir / "model_final", model.state_dict(), cfg,
                       metadata={"source": "kmax train", "iteration": str(iteration)})


def load_initial_weights(model: nn.Module, cfg: Any) -> None:
    """Initialise ``model`` from the native folder ``cfg.model.weights`` (a fresh run's start).

    The folder must hold the same family (``model.meta_architecture``) and exactly the model's
    entries with the model's shapes: an ImageNet initialisation written by
    ``kmax convert --from imagenet --config PRESET`` is a full model folder whose non-backbone
    parts are at their initialisation, so it loads strictly like any other.

    Raises:
        InputError: the folder is not a checkpoint folder, holds another family, or its
            entries/shapes differ from the model's (the message names the folder and up to
            five differing entries).
    """
    from kmax_deeplab.checkpoints.native import load_native
    from kmax_deeplab.errors import InputError

    folder = cfg.model.weights
    try:
        src_cfg, state = load_native(folder)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"model.weights: {e}") from None
    want, found = cfg.model.meta_architecture, src_cfg.model.meta_architecture
    if want != found:
        raise InputError(f"model.weights: {folder} holds a {found!r} model, the config builds "
                         f"{want!r} (model.meta_architecture)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{what}: {', '.join(keys[:5])}{more}")
        raise InputError(f"model.weights: {folder} does not fit the model of this config "
                         f"(model.backbone {cfg.model.backbone!r}, checkpoint's "
                         f"{src_cfg.model.backbone!r}): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    logger.info("model initialised from %s (%d tensors)", folder, len(state))


def train_from_config(cfg: Any, *, output_dir: str | Path | None = None, resume: bool = False,
                      progress: bool = True, max_iters: int | None = None,
                      eval_max_images: int | None = None,
                      accept_changes: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Train ``cfg`` in this process (one rank of a torchrun job, or alone).

    Args:
        cfg: a full :class:`~kmax_deeplab.config.Config`.
        output_dir: run folder (default ``cfg.solver.output_dir``); gets ``config.yaml``,
            checkpoints, ``metrics.jsonl``, ``tb/`` and, at the end, ``model_final/``.
        resume: continue from the newest intact checkpoint of ``output_dir`` when there is
            one; a stored config that differs in a way that changes the run is refused
            unless its keys are in ``accept_changes`` (:mod:`kmax_deeplab.engine.resume`).
        progress: tqdm bar on rank 0 (else a log line every ``log_period`` steps).
        max_iters: stop early at this step (the schedule still spans ``solver.max_iters``).
        eval_max_images: limit the periodic validation to the first N val images.

    Returns:
        The trainer's summary (``iteration``, ``skipped_steps``, ``last_losses``, ``eval``)
        plus ``output_dir``, ``final`` (the exported folder or None) and ``pq_result``.

    Raises:
        DeviceError: ``solver.device`` does not exist here. ConfigError: refused resume
        changes. Builder errors (model, data) come before the run folder is created.
    """
    from kmax_deeplab.config import config_to_dict, save_config
    from kmax_deeplab.config.validate import check_device
    from kmax_deeplab.engine.resume import check_fresh_run_folder, clean_run_folder, prepare_resume
    from kmax_deeplab.engine.trainer import Trainer

    setup_console_logging()
    out = Path(output_dir or cfg.solver.output_dir)
    if not resume:
        check_fresh_run_folder(out)  # never mix two runs in one folder
    device = getattr(cfg.solver, "device", "auto")
    if device != "auto":
        check_device(device, "solver.device")
    dist = init_distributed(device)
    try:
        solver = cfg.solver
        if solver.amp == "fp16" and dist.device.type != "cuda":
            logger.warning("solver.amp=fp16 (the bytedance recipe) needs CUDA; training on %s in "
                           "fp32 instead (solver.amp=bf16 also works on CPU)", dist.device)
            solver = dataclasses.replace(solver, amp="none")
        seed_everything(int(cfg.solver.seed))
        parts = build_training(cfg, eval_max_images=eval_max_images)
        point = prepare_resume(out, config_to_dict(cfg), accept_changes) if resume else None
        if cfg.model.weights and point is None:
            load_initial_weights(parts.model, cfg)  # every rank: an identical start for DDP
        # Only now, with config, model, weights and data checked, is the run folder touched.
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if resume:
                clean_run_folder(out, int(point.state["iteration"]) if point else 0)
            save_config(cfg, out / "config.yaml")
        trainer = Trainer(solver, parts.model, parts.criterion, parts.train_dataset,
                          parts.collate_fn, output_dir=out, dist=dist,
                          prepare_batch=parts.prepare_batch, evaluate_fn=parts.evaluate_fn,
                          config_dict=config_to_dict(cfg), num_workers=int(cfg.data.num_workers),
                          progress=progress, optimizer_factory=parts.optimizer_factory,
                          scheduler_factory=parts.scheduler_factory)
        if point is not None:
            trainer.load_state(point.state, point.path)
        summary = trainer.train(max_iters=max_iters)
        final = None
        if dist.is_main and trainer.iteration >= cfg.solver.max_iters:
            final = export_final_weights(cfg, trainer.model, out, trainer.iteration)
            logger.info("final weights: %s", final)
        pq = getattr(parts.evaluate_fn, "last_result", None)
        return {**summary, "output_dir": out, "final": final, "pq_result": pq,
                "dist": dist, "trainer": trainer}
    finally:
        cleanup_distributed()


__all__ = ["DistInfo", "TrainingParts", "build_dataset", "build_semantic_dataset", "build_training",
           "export_final_weights", "load_initial_weights", "make_prepare_batch", "seed_everything",
           "small_instance_weighting", "train_from_config"]
