"""Shared layers and file helpers: norms, drop path, atomic writes, the native checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kmax_deeplab.checkpoints.native import load_native, save_native
from kmax_deeplab.config import get_preset
from kmax_deeplab.fileio import atomic_path, atomic_write_text
from kmax_deeplab.modeling.layers import DropPath, LayerNorm2d, LayerNormFP32, drop_path, get_norm


def test_batch_norm_constants():
    bn = get_norm("BN", 8)
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.eps == 1e-3 and bn.momentum == 0.01
    assert isinstance(get_norm("BN", 8, dim=1), torch.nn.BatchNorm1d)
    sbn = get_norm("SyncBN", 8)
    assert isinstance(sbn, torch.nn.SyncBatchNorm) and sbn.eps == 1e-3 and sbn.momentum == 0.01
    with pytest.raises(ValueError, match="unknown norm"):
        get_norm("GN", 8)


def test_layer_norm_2d_matches_channels_last_layer_norm():
    torch.manual_seed(0)
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref, rtol=1e-5, atol=1e-5)
    # bf16 input: computed in fp32, returned in bf16
    y = ln(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ln(x.bfloat16().float()), rtol=1e-2, atol=1e-2)
    lnl = LayerNormFP32(6)
    assert lnl.eps == 1e-6 and lnl(x.permute(0, 2, 3, 1).half()).dtype == torch.float16


def test_drop_path_identity_in_eval_and_rescales_in_train():
    x = torch.ones(4000, 3)
    m = DropPath(0.25).eval()
    assert torch.equal(m(x), x)
    m.train()
    torch.manual_seed(0)
    y = m(x)
    kept = (y[:, 0] != 0)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert torch.all(y[~kept] == 0)
    assert 0.7 < kept.float().mean().item() < 0.8
    assert torch.equal(drop_path(x, 0.0, True), x)
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_native_checkpoint_roundtrip(tmp_path):
    cfg = get_preset("synthetic/kmax_tiny")
    state = {"a.weight": torch.randn(3, 2), "b.bias": torch.arange(4)}
    save_native(tmp_path / "ck", state, cfg, metadata={"source": "test"})
    cfg2, state2 = load_native(tmp_path / "ck")
    assert cfg2 == cfg
    assert state2.keys() == state.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    with pytest.raises(FileNotFoundError, match="config.yaml is missing"):
        (tmp_path / "ck" / "config.yaml").unlink()
        load_native(tmp_path / "ck")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x00garbage")
    save_native(tmp_path / "ok", state, cfg)
    (tmp_path / "bad" / "config.yaml").write_text((tmp_path / "ok" / "config.yaml").read_text())
    with pytest.raises(ValueError, match="cannot read safetensors"):
        load_native(tmp_path / "bad")
