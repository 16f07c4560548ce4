"""The table of model families: ``meta_architecture`` -> :class:`Family` (a plain dict).

Everything above the models (training wiring, the predictor, the checkpoint converters, the
``kmax`` commands, the config schema) reaches a family only through :data:`FAMILIES`, so a new
family is a folder of its own (``modeling/<family>/``) plus one row here. As in
segment-anything's ``sam_model_registry`` (a dict, not a decorator registry), the table can be
read and grepped without anything having run at import time. A test may add a row with
``monkeypatch.setitem(FAMILIES, name, Family(...))``.

Every builder takes the full run config (duck typed: ``cfg.model``, ``cfg.loss``,
``cfg.solver``, ``cfg.postprocess``, ``cfg.data``); nothing here imports ``kmax_deeplab.config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from kmax_deeplab.modeling.kmax.family import KMAX
from kmax_deeplab.modeling.max_deeplab.family import MAX_DEEPLAB
from kmax_deeplab.modeling.knet.family import KNET
from kmax_deeplab.modeling.knet_semantic.family import KNET_SEMANTIC


def default_scheduler(optimizer: Any, cfg: Any) -> Any:
    """:func:`kmax_deeplab.solver.build_scheduler` of ``cfg.solver`` (every family's schedule today)."""
    from kmax_deeplab.solver import build_scheduler

    return build_scheduler(optimizer, cfg.solver)


@dataclass(frozen=True)
class Family:
    """One model family: how to build, train, run and import each part of it.

    Attributes:
        name: the ``model.meta_architecture`` key.
        description: one line for ``kmax info``.
        sections: config section name -> dataclass (``"model"`` must extend
            :class:`~kmax_deeplab.modeling.sections.ModelConfig`; also ``"loss"``,
            ``"postprocess"``): the YAML sections this family owns.
        build_model: ``cfg -> nn.Module`` taking ``[B, 3, H, W]`` float RGB 0..255 (the
            family's geometry) and returning a ``MaskTransformerOutput`` (panoptic / instance
            tasks) or, for ``tasks == ("semantic",)``, in eval mode a dict with ``sem_seg``
            float32 logits ``[B, C, H, W]`` at the input size (the contract of
            ``engine/semantic_inference.py``).
        build_criterion: ``cfg -> criterion(outputs, targets) -> dict[str, Tensor]`` of
            already-weighted scalar loss terms.
        postprocess: ``(output, *, cfg, is_thing, train_id_to_category_id, canvas_size,
            valid_size, output_size, semantic) -> dict`` for one image (``output``: the
            model's tensors without the batch dimension): ``panoptic`` ``[Ho, Wo]`` int32
            tensor (0 = void), ``segments_info`` (COCO-panoptic dicts), with
            ``semantic=True`` also ``semantic`` ``[Ho, Wo]`` int64 train ids, and for families
            with an instance task optionally ``instances`` (list of ``{"mask" [Ho, Wo] bool,
            "category_id", "score"}``). A semantic-only family's raises ValueError (its
            model's ``sem_seg`` logits are the prediction).
        input_geometry: ``cfg -> geometry`` (:mod:`kmax_deeplab.geometry`): resize / pad /
            normalisation of images, read by the predictor, transforms and collate.
        build_optimizer: ``(model, cfg) -> torch.optim.Optimizer`` (with the family's
            parameter groups).
        build_scheduler: ``(optimizer, cfg) -> LR scheduler`` stepped once per update (default:
            :func:`kmax_deeplab.solver.build_scheduler` of ``cfg.solver``: warmup + poly or step).
        importers: checkpoint source (``kmax convert --from``) -> ``(src, model, cfg, strict)
            -> state_dict`` of our names (strict: every foreign tensor used, every model
            entry produced).
        check_config: ``cfg -> None``; raises ``ValueError`` (naming the option) for a config
            the family cannot train or run with.
        inference_keys: output keys the post-processing reads (kept, cast to fp32, by the
            predictor).
        class_activation: ``"softmax_void"`` (``pred_logits [B, N, C+1]``, void last) or
            ``"sigmoid"`` (``[B, N, C]``); see ``modeling/postprocess.py``.
        mask_activation: ``"softmax"`` (masks compete per pixel) or ``"sigmoid"``.
        mask_stride: output stride of ``pred_masks`` relative to the input (targets are
            built at it).
        full_resolution_targets: the criterion takes the collated full-resolution targets
            (``masks``, ``labels``, ``is_crowd``, ``void``) instead of the stride-subsampled
            ones (K-Net resizes them bilinearly itself).
        tasks: the values of ``model.task`` the family serves (the first is the default of
            a model section without ``task``): ``"panoptic"``, ``"instance"``, ``"semantic"``.
    """

    name: str
    description: str
    sections: Mapping[str, type]
    build_model: Callable[[Any], nn.Module]
    build_criterion: Callable[[Any], Any]
    postprocess: Callable[..., dict]
    input_geometry: Callable[[Any], Any]
    build_optimizer: Callable[[nn.Module, Any], Any]
    build_scheduler: Callable[[Any, Any], Any] = default_scheduler
    importers: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    check_config: Callable[[Any], None] = lambda cfg: None
    inference_keys: tuple[str, ...] = ("pred_logits", "pred_masks")
    class_activation: str = "softmax_void"
    mask_activation: str = "softmax"
    mask_stride: int = 4
    full_resolution_targets: bool = False
    tasks: tuple[str, ...] = ("panoptic",)


#: ``meta_architecture`` -> :class:`Family`.
FAMILIES: dict[str, Family] = {
    "kmax": Family(**KMAX),
    "max_deeplab": Family(**MAX_DEEPLAB),
    "knet": Family(**KNET),
    "knet_semantic": Family(**KNET_SEMANTIC),
}


def get_family(name: str) -> Family:
    """The :class:`Family` of ``model.meta_architecture = name``.

    Raises:
        ValueError: unknown name; the message lists the families.
    """
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"model.meta_architecture: unknown model family {name!r}; "
                         f"available: {', '.join(sorted(FAMILIES))}") from None


def family_of(cfg: Any) -> Family:
    """The :class:`Family` of a run config (``cfg.model.meta_architecture``)."""
    return get_family(cfg.model.meta_architecture)


def task_of(cfg: Any) -> str:
    """The task a run config's model serves: ``cfg.model.task`` when the section has one, else
    its family's first task (kMaX, MaX-DeepLab: ``"panoptic"``)."""
    return str(getattr(cfg.model, "task", None) or family_of(cfg).tasks[0])


__all__ = ["FAMILIES", "Family", "family_of", "get_family", "task_of"]
