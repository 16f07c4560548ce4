"""The training loop: AMP, gradient accumulation, DDP + SyncBN, checkpoints, NaN guard.

:class:`Trainer` is model-agnostic: it takes a built model, a criterion returning a dict
of already-weighted loss terms, a training dataset and a collate function. Building them
from a config lives in :mod:`kmax_deeplab.engine.build`.

One optimizer step (spec ``kmax_deeplab.md`` §4, §7.7):

1. for each of ``grad_accum_steps`` micro-batches: forward under autocast
   (``solver.amp``: ``none`` | ``bf16`` | ``fp16``), cast the outputs to fp32, run the
   criterion outside autocast (losses always in fp32), check every term is finite
   (the check is agreed across ranks), backward ``sum(terms) / grad_accum_steps``
   (scaled by a ``GradScaler`` under fp16; DDP syncs gradients on the last micro-batch);
2. with ``solver.clip_grad_norm > 0``: unscale (fp16) and clip the global gradient norm;
3. ``optimizer.step()`` (the family's optimizer, e.g. AdamW, :mod:`kmax_deeplab.solver`),
   ``scheduler.step()``.

A non-finite term raises :class:`FloatingPointError` naming the iteration and the term
(``solver.nan_policy="raise"``), or skips the update (``"skip"``: no parameter change,
the schedule and the data stream still advance).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from kmax_deeplab.engine import checkpointer as ckpt
from kmax_deeplab.engine.distributed import (
    DistInfo,
    all_gather_object,
    any_across_ranks,
    reduce_mean_dict,
)
from kmax_deeplab.engine.logging import MetricWriter
from kmax_deeplab.solver import build_optimizer, build_scheduler
from kmax_deeplab.engine.sampling import SeededDataset, StreamBatchSampler, split_micro_batch
from kmax_deeplab.modeling.layers.sync_bn import convert_sync_batchnorm

logger = logging.getLogger("kmax_deeplab.train")

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

PrepareFn = Callable[[Mapping[str, Any], torch.device], tuple[Tensor, Any]]
EvaluateFn = Callable[[nn.Module, DistInfo], Mapping[str, float]]


def default_prepare_batch(batch: Mapping[str, Any], device: torch.device) -> tuple[Tensor, Any]:
    """``collate_panoptic`` batch -> (``images [B,3,H,W]`` on device, targets on device).

    ``targets`` is the batch's list of per-image dicts with every tensor moved to ``device``.
    """
    images = batch["images"].to(device, non_blocking=True)
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
                for k, v in t.items()} for t in batch["targets"]]
    return images, targets


def _to_fp32(x: Any) -> Any:
    """Recursively cast floating tensors in nested dicts/lists to fp32."""
    if isinstance(x, Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, Mapping):
        return {k: _to_fp32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_fp32(v) for v in x)
    return x


class Trainer:
    """Train ``model`` with ``criterion`` on ``train_dataset`` following ``solver``.

    Args:
        solver: a ``SolverConfig`` (batch_size is the *global* batch per optimizer step;
            the per-rank micro-batch is ``batch_size / (world_size * grad_accum_steps)``).
        model: the unwrapped model; moved to the device, converted to SyncBN and wrapped
            in DDP when ``dist.world_size > 1``.
        criterion: ``criterion(outputs, targets) -> dict[str, Tensor]`` of weighted
            scalar loss terms; the total loss is their sum.
        train_dataset: map-style dataset; ``collate_fn`` turns a list of samples into a batch.
        output_dir: run folder (checkpoints, ``metrics.jsonl``, ``tb/``, ``config.yaml``).
        dist: this process's :class:`DistInfo` (single CPU process by default).
        prepare_batch: batch -> ``(images, targets)`` on device.
        evaluate_fn: called on every rank every ``solver.eval_period`` steps and at the
            end; returns metrics (rank 0's are logged with prefix ``val/``).
        config_dict: the full config, stored in checkpoints.
        num_workers: DataLoader workers.
        progress: show a tqdm bar on rank 0.
        optimizer_factory: ``model -> optimizer`` (the model family's; default AdamW over the
            bytedance parameter groups, :func:`kmax_deeplab.solver.build_optimizer`).
        scheduler_factory: ``optimizer -> scheduler`` stepped once per update (default
            warmup + poly, :func:`kmax_deeplab.solver.build_scheduler`).

    Raises:
        ValueError: bad ``solver.amp`` / ``solver.nan_policy`` or a batch that does not split.
    """

    def __init__(self, solver: Any, model: nn.Module, criterion: Callable[..., Mapping[str, Tensor]],
                 train_dataset: Dataset, collate_fn: Callable[[list[Any]], Any], *,
                 output_dir: str | Path, dist: DistInfo | None = None,
                 prepare_batch: PrepareFn = default_prepare_batch,
                 evaluate_fn: EvaluateFn | None = None, config_dict: Mapping[str, Any] | None = None,
                 num_workers: int = 0, progress: bool = True,
                 optimizer_factory: Callable[[nn.Module], Any] | None = None,
                 scheduler_factory: Callable[[Any], Any] | None = None) -> None:
        if solver.amp not in AMP_DTYPES:
            raise ValueError(f"solver.amp must be one of {sorted(AMP_DTYPES)}, got {solver.amp!r}")
        if solver.nan_policy not in ("raise", "skip"):
            raise ValueError(f"solver.nan_policy must be 'raise' or 'skip', got {solver.nan_policy!r}")
        self.solver = solver
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.output_dir = Path(output_dir)
        self.accum = int(solver.grad_accum_steps)
        self.micro_batch = split_micro_batch(solver.batch_size, self.dist.world_size, self.accum)
        self.train_dataset = train_dataset
        self.collate_fn = collate_fn
        self.prepare_batch = prepare_batch
        self.evaluate_fn = evaluate_fn
        self.config_dict = dict(config_dict or {})
        self.num_workers = num_workers
        self.progress = progress

        if self.dist.distributed:
            model = convert_sync_batchnorm(model, self.device.type)
        self.model = model.to(self.device)
        self.criterion = criterion.to(self.device) if isinstance(criterion, nn.Module) else criterion
        self.optimizer = (optimizer_factory(self.model) if optimizer_factory is not None
                          else build_optimizer(self.model, solver))
        self.scheduler = (scheduler_factory(self.optimizer) if scheduler_factory is not None
                          else build_scheduler(self.optimizer, solver))
        self.amp_dtype = AMP_DTYPES[solver.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=solver.amp == "fp16")
        if self.dist.distributed:
            self.ddp: nn.Module = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        else:
            self.ddp = self.model
        # Per-rank randomness (drop path, loss sampling) after identical initialisation.
        torch.manual_seed(int(solver.seed) * 1009 + self.dist.rank)
        self.iteration = 0
        self.samples_seen = 0
        self.skipped_steps = 0
        self.last_eval: dict[str, float] = {}
        self.writer = MetricWriter(self.output_dir, enabled=self.dist.is_main)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (rank 0's view + every rank's RNG)."""
        rng = all_gather_object(ckpt.capture_rng_state())
        return {
            "iteration": self.iteration,
            "samples_seen": self.samples_seen,
            "skipped_steps": self.skipped_steps,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng,
            "world_size": self.dist.world_size,
            "config": self.config_dict,
        }

    def save(self) -> Path | None:
        """Write a checkpoint for the current iteration (rank 0 writes; all ranks gather RNG)."""
        state = self.state_dict()
        if not self.dist.is_main:
            return None
        path = ckpt.save_checkpoint(self.output_dir, state, self.iteration,
                                    keep_last_n=int(getattr(self.solver, "keep_last_n", 0)))
        logger.info("saved checkpoint %s", path)
        return path

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (``weights_only`` loading)."""
        self.load_state(ckpt.load_checkpoint(path, map_location="cpu"), path)

    def load_state(self, state: dict[str, Any], path: str | Path = "checkpoint") -> None:
        """Restore a loaded checkpoint ``state`` (``path`` is only named in logs)."""
        from kmax_deeplab.engine.resume import apply_solver_schedule

        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        apply_solver_schedule(self.scheduler, self.optimizer, self.solver)  # accepted changes
        if state.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.samples_seen = int(state["samples_seen"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        rng = state.get("rng") or []
        if int(state.get("world_size", 1)) == self.dist.world_size and len(rng) > self.dist.rank:
            ckpt.restore_rng_state(rng[self.dist.rank])
        else:
            logger.warning("%s was written with world size %s, now %s: RNG streams are re-seeded, "
                           "so the run continues but not bit-identically", path,
                           state.get("world_size"), self.dist.world_size)
            torch.manual_seed(int(self.solver.seed) * 1009 + self.dist.rank + self.iteration)
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    def resume_if_possible(self, accept_changes: tuple[str, ...] | list[str] = ()) -> bool:
        """Load the newest intact checkpoint of ``output_dir``; returns whether there was one.

        A corrupt newer checkpoint is skipped with a warning; a stored config that differs
        from ``config_dict`` in a way that changes the run is refused unless its keys are in
        ``accept_changes`` (:mod:`kmax_deeplab.engine.resume`).
        """
        from kmax_deeplab.engine.resume import check_config_changes, latest_intact_checkpoint

        point = latest_intact_checkpoint(self.output_dir)
        if point is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output_dir)
            return False
        if self.config_dict and point.state.get("config"):
            check_config_changes(point.state["config"], self.config_dict, accept_changes,
                                 where=str(self.output_dir))
        self.load_state(point.state, point.path)
        return True

    # ------------------------------------------------------------------ data
    def _batches(self) -> Iterator[Any]:
        sampler = StreamBatchSampler(
            len(self.train_dataset), self.micro_batch, world_size=self.dist.world_size,
            rank=self.dist.rank, accum_steps=self.accum, seed=int(self.solver.seed),
            start_position=self.samples_seen)
        # A private generator: creating the loader must not consume the global torch RNG,
        # or a resumed run would drift from an uninterrupted one.
        loader = DataLoader(SeededDataset(self.train_dataset), batch_sampler=sampler,
                            collate_fn=self.collate_fn, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=self.num_workers > 0,
                            generator=torch.Generator().manual_seed(0))
        return iter(loader)

    # ------------------------------------------------------------------ one step
    def _losses(self, images: Tensor, targets: Any) -> dict[str, Tensor]:
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype)
                    if self.amp_dtype is not None else contextlib.nullcontext())
        with autocast:
            outputs = self.ddp(images)
        with torch.autocast(self.device.type, enabled=False):
            losses = self.criterion(_to_fp32(outputs), targets)
        return dict(losses)

    def run_step(self, batches: Iterator[Any]) -> dict[str, float] | None:
        """One optimizer step over ``grad_accum_steps`` micro-batches.

        Returns:
            The mean loss terms (and ``total``) of this rank, or None if the step was
            skipped for a non-finite loss.

        Raises:
            FloatingPointError: a non-finite loss with ``nan_policy="raise"``.
        """
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        bad: list[str] | None = None
        m = 0
        for m in range(self.accum):
            images, targets = self.prepare_batch(next(batches), self.device)
            last = m == self.accum - 1
            sync = (self.ddp.no_sync() if self.dist.distributed and not last
                    else contextlib.nullcontext())
            with sync:
                losses = self._losses(images, targets)
                nonfinite = [f"{k}={v.detach().float().sum().item()}" for k, v in losses.items()
                             if not bool(torch.isfinite(v.detach()).all())]
                if any_across_ranks(bool(nonfinite), self.device):
                    bad = nonfinite or ["(a term on another rank)"]
                    break
                total = sum(losses.values()) / self.accum
                self.scaler.scale(total).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / self.accum
        if bad is not None:
            for _ in range(m + 1, self.accum):  # keep the data stream aligned
                next(batches)
            self.optimizer.zero_grad(set_to_none=True)
            msg = (f"non-finite loss at iteration {self.iteration} (0-based optimizer step): "
                   f"{', '.join(bad)}")
            if self.solver.nan_policy == "raise":
                raise FloatingPointError(msg + " (set solver.nan_policy=skip to skip such steps)")
            logger.warning("%s; skipping this update", msg)
            self.skipped_steps += 1
            return None
        clip = float(getattr(self.solver, "clip_grad_norm", 0.0) or 0.0)
        if clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        sums["total"] = sum(v for k, v in sums.items())
        return sums

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Run ``evaluate_fn`` on the unwrapped model in eval mode; log rank 0's metrics."""
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = dict(self.evaluate_fn(self.model, self.dist))
        finally:
            self.model.train()
        self.last_eval = metrics
        if self.dist.is_main and metrics:
            self.writer.write(self.iteration, metrics, prefix="val/")
            logger.info("evaluation at iteration %d: %s", self.iteration,
                        ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
        return metrics

    # ------------------------------------------------------------------ loop
    def train(self, *, max_iters: int | None = None) -> dict[str, Any]:
        """Run until ``solver.max_iters`` (or ``max_iters``, to stop early, e.g. in tests).

        The schedule always uses ``solver.max_iters``; ``max_iters`` only stops the loop
        (a later ``resume`` continues the same run).

        Returns:
            ``{"iteration", "skipped_steps", "last_losses", "eval"}``.
        """
        from tqdm import tqdm

        solver = self.solver
        stop = min(int(max_iters if max_iters is not None else solver.max_iters), solver.max_iters)
        global_batch = int(solver.batch_size)
        self.model.train()
        batches = self._batches()
        bar = tqdm(total=stop, initial=self.iteration, disable=not (self.dist.is_main and self.progress),
                   desc="train", dynamic_ncols=True, smoothing=0.1)
        window: dict[str, list[float]] = {}
        last: dict[str, float] = {}
        t_window = time.perf_counter()
        try:
            while self.iteration < stop:
                lr = self.optimizer.param_groups[0]["lr"]
                losses = self.run_step(batches)
                self.scheduler.step()
                self.iteration += 1
                self.samples_seen += global_batch
                if losses is not None:
                    last = losses
                    for k, v in losses.items():
                        window.setdefault(k, []).append(v)
                bar.update(1)
                if losses is not None:
                    bar.set_postfix(loss=f"{losses['total']:.3f}", lr=f"{lr:.2e}", refresh=False)
                period = max(1, int(solver.log_period))
                if self.iteration % period == 0 or self.iteration == stop:
                    means = {k: sum(v) / len(v) for k, v in window.items()}
                    means = reduce_mean_dict(means, self.device)
                    dt = (time.perf_counter() - t_window) / max(1, len(window.get("total", [1])))
                    scalars = {**{f"loss/{k}": v for k, v in means.items()}, "lr": lr,
                               "time_per_iter": dt, "skipped_steps": float(self.skipped_steps)}
                    self.writer.write(self.iteration, scalars)
                    if not self.progress and self.dist.is_main:
                        logger.info("iter %d/%d  loss %.4f  lr %.3g  %.2fs/it", self.iteration,
                                    solver.max_iters, means.get("total", math.nan), lr, dt)
                    window, t_window = {}, time.perf_counter()
                if solver.checkpoint_period > 0 and self.iteration % solver.checkpoint_period == 0:
                    self.save()
                if (solver.eval_period > 0 and self.iteration % solver.eval_period == 0
                        and self.iteration < solver.max_iters):
                    self.evaluate()
        finally:
            bar.close()
        # Always leave a checkpoint where the loop stopped, so that --resume continues.
        if solver.checkpoint_period <= 0 or self.iteration % solver.checkpoint_period:
            self.save()
        if self.iteration >= solver.max_iters:
            self.evaluate()
        self.writer.close()
        return {"iteration": self.iteration, "skipped_steps": self.skipped_steps,
                "last_losses": last, "eval": self.last_eval}
