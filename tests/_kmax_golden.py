"""Golden values of kMaX (recorded before the model-family refactor, issue 10).

:func:`compute_golden` runs, single-threaded and seeded, the ``synthetic/kmax_tiny`` model in
both variants (``model.reference=bytedance`` and ``deeplab2``): its eval- and train-mode outputs
on seeded inputs, the criterion's loss terms on a real synthetic batch, and the weights after
three steps of the demo's training path (``train_from_config``). Tensors are recorded as
SHA-256 digests of their raw bytes (bit-for-bit) plus their float64 sum (to see *how far* a
change moved them). ``tools/record_kmax_golden.py`` writes ``tests/data/kmax_golden.json``;
``tests/test_kmax_golden.py`` compares against it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

GOLDEN_FILE = Path(__file__).resolve().parent / "data" / "kmax_golden.json"
REFERENCES = ("bytedance", "deeplab2")
# The demo preset's 129 canvas for bytedance; 97 (= 32k+1, k odd) for deeplab2, where the two
# variants' align_corners rules differ at the stride-32 map (at 129 the tiny models are equal).
CANVAS = {"bytedance": 129, "deeplab2": 97}


def tensor_record(t: torch.Tensor) -> dict[str, Any]:
    """``{"shape", "dtype", "sha256", "sum"}`` of a tensor (sum in float64, as hex)."""
    t = t.detach().cpu().contiguous()
    digest = hashlib.sha256(t.numpy().tobytes()).hexdigest()
    return {"shape": list(t.shape), "dtype": str(t.dtype), "sha256": digest,
            "sum": float(t.double().sum()).hex()}


def _flatten(out: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    if isinstance(out, torch.Tensor):
        flat[prefix] = out
    elif isinstance(out, dict):
        for k in sorted(out):
            flat.update(_flatten(out[k], f"{prefix}.{k}" if prefix else k))
    elif isinstance(out, (list, tuple)):
        for i, v in enumerate(out):
            flat.update(_flatten(v, f"{prefix}[{i}]"))
    return flat


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def single_thread():
    """One intra-op thread: CPU reductions are then reproducible whatever the machine's setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _tiny(reference: str, overrides=()):
    from kmax_deeplab.config import apply_overrides, get_preset

    return apply_overrides(get_preset("synthetic/kmax_tiny"), [f"model.reference={reference}", *overrides])


def compute_golden(workdir: Path) -> dict[str, Any]:
    """Run everything single-threaded; returns ``{reference: {"outputs", "losses", "trained"}}``."""
    from kmax_deeplab.data.synthetic import write_synthetic_dataset
    from kmax_deeplab.engine.build import build_training, train_from_config

    workdir = Path(workdir)
    data_root = workdir / "data"
    write_synthetic_dataset(data_root, 4, 1, image_size=128, seed=0)
    result: dict[str, Any] = {}
    with single_thread():
        for ref in REFERENCES:
            rec: dict[str, Any] = {}
            size = CANVAS[ref]
            geometry = [f"model.image_size=[{size},{size}]", f"data.crop_size=[{size},{size}]"]
            cfg = _tiny(ref, [f"data.root={data_root}", *geometry])
            # 1. outputs of the seeded model, eval and train mode
            _seed(0)
            parts = build_training(cfg, with_eval=False)
            model = parts.model
            images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 255
            model.eval()
            with torch.no_grad():
                rec["outputs_eval"] = {k: tensor_record(v) for k, v in _flatten(model(images)).items()}
            # 2. train-mode outputs and losses on a real synthetic batch
            _seed(2)
            batch = parts.collate_fn([parts.train_dataset[0], parts.train_dataset[1]])
            imgs, targets = parts.prepare_batch(batch, torch.device("cpu"))
            rec["batch_images"] = tensor_record(imgs)
            model.train()
            _seed(3)
            outputs = model(imgs)
            rec["outputs_train"] = {k: tensor_record(v) for k, v in _flatten(outputs).items()}
            losses = parts.criterion(outputs, targets, generator=torch.Generator().manual_seed(4))
            rec["losses"] = {k: float(v.detach()).hex() for k, v in sorted(losses.items())}
            total = sum(losses.values())
            total.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            rec["grads"] = tensor_record(grads)
            # 3. three steps of the demo's training path
            run_cfg = _tiny(ref, [f"data.root={data_root}", *geometry, "solver.batch_size=2", "solver.max_iters=3",
                                  "solver.warmup_iters=1", "solver.checkpoint_period=0",
                                  "solver.log_period=1", "solver.device=cpu", "data.num_workers=0"])
            summary = train_from_config(run_cfg, output_dir=workdir / f"run_{ref}", progress=False)
            state = summary["trainer"].model.state_dict()
            rec["trained"] = {"weights": tensor_record(torch.cat([v.detach().double().flatten()
                                                                   for _, v in sorted(state.items())])),
                              "num_tensors": len(state),
                              "last_losses": {k: float(v).hex() for k, v in sorted(summary["last_losses"].items())}}
            result[ref] = rec
    return result
