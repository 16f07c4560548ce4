"""Training throughput (images/s) and peak memory of kMaX-DeepLab R50 at the COCO 1281² crop.

One training step = forward (train mode, aux outputs + semantic head), the full kMaX
criterion on stride-4 targets, backward and an AdamW step with the recipe's param groups:
exactly what :class:`kmax_deeplab.engine.trainer.Trainer` runs. Targets are synthetic
(20 random rectangles per image, 133 classes), so no dataset is needed. Plain script;
prints one Markdown table row.

    PYTHONPATH=src python benchmarks/bench_train.py                # CPU, batch 1, 2 steps
    PYTHONPATH=src python benchmarks/bench_train.py --cuda --batch 16 --amp bf16
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch

from kmax_deeplab.config import get_preset
from kmax_deeplab.data.targets import prepare_targets
from kmax_deeplab.engine.optim import build_optimizer
from kmax_deeplab.losses import build_criterion
from kmax_deeplab.modeling.kmax import build_kmax


def fake_targets(batch: int, size: int, num_classes: int, g: torch.Generator) -> list[dict]:
    """Per-image dataset targets: 20 random rectangles (later ones on top), rest void."""
    out = []
    for _ in range(batch):
        ids = torch.zeros(size, size, dtype=torch.int64)
        for k in range(1, 21):
            y0, x0 = torch.randint(0, size - 64, (2,), generator=g).tolist()
            h, w = torch.randint(32, size // 2, (2,), generator=g).tolist()
            ids[y0:y0 + h, x0:x0 + w] = k
        present = [k for k in range(1, 21) if (ids == k).any()]
        masks = torch.stack([ids == k for k in present])
        out.append({"masks": masks,
                    "labels": torch.randint(0, num_classes, (len(present),), generator=g),
                    "is_crowd": torch.zeros(len(present), dtype=torch.bool),
                    "void": ids == 0})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="coco/kmax_r50")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: CPU 1, CUDA 16). With batch 1 the batch norms that see "
                         "one value per channel (ASPP image pooling) run in eval mode")
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after 1 warm-up step)")
    ap.add_argument("--cuda", action="store_true", help="run on cuda:0")
    ap.add_argument("--amp", default=None, choices=["none", "bf16", "fp16"],
                    help="autocast dtype (default: none on CPU, bf16 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda:0" if args.cuda else "cpu")
    batch = args.batch or (16 if args.cuda else 1)
    amp = args.amp or ("bf16" if args.cuda else "none")
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    cfg = get_preset(args.preset)
    torch.manual_seed(0)
    model = build_kmax(cfg.model).to(device).train()
    criterion = build_criterion(cfg.loss, cfg.model.num_classes)
    opt = build_optimizer(model, cfg.solver)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if batch == 1:
        # Train-mode BN cannot normalise a single value per channel (the ASPP pooling branch
        # at batch 1): such layers switch to eval mode the first time they see one.
        def single_value_to_eval(module, inputs):
            x = inputs[0]
            if x.numel() // x.shape[1] == 1:
                module.eval()

        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.register_forward_pre_hook(single_value_to_eval)
    h, w = cfg.model.image_size
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 3, h, w, generator=g) * 255).to(device)
    targets = prepare_targets(fake_targets(batch, h, cfg.model.num_classes, g),
                              cfg.model.num_classes, device=device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(images)
        losses = criterion(out, targets)  # the criterion runs in fp32 itself
        loss = sum(losses.values())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    step()  # warm-up (allocations, cuDNN autotune)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / args.steps
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (CUDA, allocated)"
        hw = torch.cuda.get_device_name(0)
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB (process max RSS)"
        hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print("| model | device | batch | amp | s/step | images/s | peak memory |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {cfg.name} {h}x{w} | {hw} | {batch} | {amp} | {dt:.2f} | {batch / dt:.3f} | {peak} |")


if __name__ == "__main__":
    main()
