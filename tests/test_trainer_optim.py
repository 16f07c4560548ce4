"""Optimizer param groups and the warmup + poly LR schedule against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from kmax_deeplab.config import get_preset
from kmax_deeplab.engine.optim import (
    build_optimizer,
    build_param_groups,
    build_scheduler,
    warmup_poly_factor,
)

from _trainer_toys import ToyModel, toy_solver


def _groups_by_name(groups):
    return {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}


def test_param_groups_follow_bytedance_rules():
    groups = build_param_groups(ToyModel(), base_lr=1e-2, weight_decay=0.05,
                                backbone_lr_multiplier=0.1)
    got = _groups_by_name(groups)
    assert got == {
        # backbone: LR x0.1; conv weight decays, BN params and ConvNeXt gamma do not
        "backbone.gamma": (1e-3, 0.0),
        "backbone.conv.weight": (1e-3, 0.05),
        "backbone.bn.weight": (1e-3, 0.0),
        "backbone.bn.bias": (1e-3, 0.0),
        # head: weight decays, bias does not
        "head.weight": (1e-2, 0.05),
        "head.bias": (1e-2, 0.0),
        # layer norm, cluster centres (an Embedding), relative-position table: no decay
        "norm.weight": (1e-2, 0.0),
        "norm.bias": (1e-2, 0.0),
        "_cluster_centers.weight": (1e-2, 0.0),
        "_rpe._embeddings": (1e-2, 0.0),
    }
    # merged into 4 (lr, wd) groups, every parameter exactly once
    assert len(groups) == 4
    assert sum(len(g["params"]) for g in groups) == len(list(ToyModel().parameters()))


def test_adamw_settings_and_decay_only_where_allowed():
    model = ToyModel()
    opt = build_optimizer(model, toy_solver(base_lr=0.1, weight_decay=0.05))
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only decoupled weight decay moves parameters
    after = dict(model.named_parameters())
    # decayed: p * (1 - lr * wd); head lr 0.1 -> x0.995, backbone lr 0.01 -> x0.9995
    torch.testing.assert_close(after["head.weight"], before["head.weight"] * 0.995)
    torch.testing.assert_close(after["backbone.conv.weight"], before["backbone.conv.weight"] * 0.9995)
    for name in ("head.bias", "backbone.bn.weight", "backbone.gamma", "norm.weight",
                 "_cluster_centers.weight", "_rpe._embeddings"):
        assert torch.equal(after[name], before[name]), name


def test_lr_curve_matches_hand_computed_values():
    model = ToyModel()
    solver = toy_solver(base_lr=1e-2, warmup_iters=2, warmup_factor=0.1, max_iters=8)
    opt = build_optimizer(model, solver)
    sched = build_scheduler(opt, solver)
    # step t: t<2 -> 0.1*(1-t/2)+t/2 ; t>=2 -> (1-t/8)^0.9 (no poly factor during warmup)
    expected = [0.1, 0.55, 0.7718895067235705, None, None, None, None, 0.15389305166811454]
    expected[3] = 0.6550764934180986  # (5/8)^0.9
    seen = []
    for _ in range(8):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for t, e in enumerate(expected):
        if e is None:
            continue
        lrs = dict(zip((g["lr_multiplier"] for g in opt.param_groups), seen[t]))
        assert lrs[1.0] == pytest.approx(1e-2 * e, rel=1e-12), t
        assert lrs[0.1] == pytest.approx(1e-3 * e, rel=1e-12), t


def test_schedule_recipe_numbers():
    kw = dict(max_iters=150_000, warmup_iters=5000, power=0.9)
    assert warmup_poly_factor(0, warmup_factor=0.001, **kw) == pytest.approx(0.001)  # BD start
    assert warmup_poly_factor(0, warmup_factor=0.0, **kw) == 0.0  # TF warmup from 0
    assert warmup_poly_factor(2500, warmup_factor=0.0, **kw) == pytest.approx(0.5)
    assert warmup_poly_factor(2500, warmup_factor=0.001, **kw) == pytest.approx(0.5005)
    assert warmup_poly_factor(5000, warmup_factor=0.001, **kw) == pytest.approx(0.9699493779682662)
    assert warmup_poly_factor(149_999, warmup_factor=0.001, **kw) == pytest.approx(2.1954212667989878e-05)
    assert warmup_poly_factor(150_000, warmup_factor=0.001, **kw) == 0.0
    with pytest.raises(ValueError):
        warmup_poly_factor(0, max_iters=0, warmup_iters=0, warmup_factor=0.0, power=0.9)


def test_scheduler_state_is_resumable():
    model = ToyModel()
    solver = toy_solver()
    opt = build_optimizer(model, solver)
    sched = build_scheduler(opt, solver)
    for _ in range(3):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(ToyModel(), solver)
    sched2 = build_scheduler(opt2, solver)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    sched.step()
    sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("name,lr,iters,batch", [
    ("coco/kmax_r50", 5e-4, 150_000, 64),
    ("cityscapes/kmax_r50", 3e-4, 60_000, 32),
    ("ade20k/kmax_r50_641", 5e-4, 100_000, 64),
])
def test_presets_carry_the_spec_recipe(name, lr, iters, batch):
    s = get_preset(name).solver
    assert (s.base_lr, s.max_iters, s.batch_size) == (lr, iters, batch)
    assert (s.warmup_iters, s.warmup_factor, s.poly_power) == (5000, 0.001, 0.9)
    assert (s.weight_decay, tuple(s.betas), s.eps, s.backbone_lr_multiplier) == (0.05, (0.9, 0.999), 1e-8, 0.1)
    assert s.amp == "fp16"  # bytedance trains with AMP fp16 (spec §4 "Precision")
