"""Optimizer / schedule / parameter-group factories and gradient clipping (issue 10, item 5)."""

from __future__ import annotations

import math

import pytest
import torch

from _trainer_toys import ToyCriterion, ToyDataset, ToyModel, toy_collate, toy_solver
from kmax_deeplab.solver import (
    WarmupStepLR,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    in_module,
    warmup_step_factor,
)


def test_warmup_step_factor_hand_computed():
    kw = dict(warmup_iters=4, warmup_factor=0.001, steps=(6, 9), gamma=0.1)
    # t < 4: 0.001 * (1 - t/4) + t/4; then 1 until 6, 0.1 from 6, 0.01 from 9
    expected = [0.001, 0.25075, 0.5005, 0.75025, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01]
    assert [warmup_step_factor(t, **kw) for t in range(11)] == pytest.approx(expected, rel=1e-12)
    # a milestone inside the warmup multiplies both (mmcv: warmup scales the regular LR)
    assert warmup_step_factor(3, warmup_iters=4, warmup_factor=0.0, steps=(2,), gamma=0.5) == 0.375
    with pytest.raises(ValueError, match="increasing"):
        warmup_step_factor(0, warmup_iters=0, warmup_factor=1.0, steps=(5, 3), gamma=0.1)


def test_solver_picks_adam_and_step_schedule():
    model = ToyModel()
    solver = toy_solver(optimizer="adam", lr_schedule="warmup_step", lr_steps=(3,), lr_gamma=0.5,
                        warmup_iters=0, weight_decay=0.0)
    opt = build_optimizer(model, solver)
    sched = build_scheduler(opt, solver)
    assert type(opt) is torch.optim.Adam and isinstance(sched, WarmupStepLR)
    lrs = []
    for _ in range(5):
        lrs.append(max(g["lr"] for g in opt.param_groups))
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2, 5e-3, 5e-3])
    with pytest.raises(ValueError, match="solver.optimizer"):
        build_optimizer(model, toy_solver(optimizer="sgd"))
    with pytest.raises(ValueError, match="solver.lr_schedule"):
        build_scheduler(opt, toy_solver(lr_schedule="cosine"))


def test_lr_rules_are_explicit_name_predicates():
    """A MaX-style rule (0.1x for the pretrained encoder part, spec max_deeplab §4) and the
    kMaX prefix rule: a module merely *containing* 'backbone' in its name is not the backbone."""
    model = ToyModel()
    model.not_backbone_head = torch.nn.Linear(2, 2)
    groups = build_param_groups(model, base_lr=1.0, weight_decay=0.0, backbone_lr_multiplier=0.1)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr["backbone.conv.weight"] == 0.1 and lr["not_backbone_head.weight"] == 1.0
    rules = ((lambda n: n.startswith("backbone.") and "gamma" not in n, 0.1), (in_module("head"), 2.0))
    groups = build_param_groups(model, base_lr=1.0, weight_decay=0.0, lr_rules=rules)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert (lr["backbone.conv.weight"], lr["backbone.gamma"], lr["head.weight"], lr["norm.weight"]) == (0.1, 1.0, 2.0, 1.0)


def _one_step_update(tmp_path, clip):
    from kmax_deeplab.engine.trainer import Trainer

    torch.manual_seed(0)
    model = ToyModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=1.0)  # noqa: E731  update = -grad
    trainer = Trainer(toy_solver(max_iters=1, checkpoint_period=0, clip_grad_norm=clip), model,
                      ToyCriterion(), ToyDataset(), toy_collate, output_dir=tmp_path / str(clip),
                      progress=False, optimizer_factory=sgd,
                      scheduler_factory=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0))
    trainer.run_step(trainer._batches())
    after = model.state_dict()
    return torch.cat([(before[k] - after[k]).flatten() for k, _ in model.named_parameters()])


def test_gradient_clipping_bounds_the_global_norm(tmp_path):
    free = _one_step_update(tmp_path, 0.0)
    norm = float(free.norm())
    assert norm > 0.05
    clipped = _one_step_update(tmp_path, 0.05)
    assert float(clipped.norm()) == pytest.approx(0.05, rel=1e-4)
    # clipping rescales, it does not change the direction
    assert float(torch.nn.functional.cosine_similarity(free, clipped, dim=0)) == pytest.approx(1.0, abs=1e-5)
    assert math.isclose(float(_one_step_update(tmp_path, 10 * norm).norm()), norm, rel_tol=1e-6)
