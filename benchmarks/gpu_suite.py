"""Every GPU check the open issues ask for, in one process per run, within a time budget.

For each model family's recipe preset (default: kMaX R50, MaX-DeepLab-S, K-Net R-50; presets
that do not exist in this checkout are skipped with a note):

1. **CUDA correctness against CPU**: the same seeded weights and input on both devices, eval
   mode, fp32 with TF32 off; max relative difference of the class and mask logits and the
   agreement of the mask argmax over queries (k-means/softmax ownership), which float rounding
   alone keeps near 100 %.
2. **bf16 inference images/s** at batch 1 and 8, eager and ``torch.compile``, at the
   family's canvas (kMaX/MaX: the preset's fixed canvas; K-Net: 800x1333 padded to 32).
3. **bf16 training step**: images/s and peak allocated memory for forward, the family's own
   criterion, backward and its optimizer step (the parts ``build_training`` gives the trainer),
   on synthetic targets (20 rectangles per image) collated by the family's geometry.

Random weights: speed does not depend on them. Prints Markdown tables; record them with the
hardware and date in ``docs/benchmarks.md``. ``benchmarks/gpu_suite.sh`` runs this with the
budget the device machine allows.

    PYTHONPATH=src python benchmarks/gpu_suite.py [--presets coco/kmax_r50 ...] [--budget-s 420]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch

DEVICE = torch.device("cuda")  # --device cpu: a smoke run of this script without a GPU
DEFAULT_PRESETS = ("coco/kmax_r50", "coco/max_deeplab_s_641", "coco/knet_r50_fpn_1x",
                   "ade20k/knet_r50_d8_upernet_512")


def is_semantic(cfg: Any) -> bool:
    """A semantic-task model (``{"sem_seg"}`` output, label-map targets)."""
    from kmax_deeplab.modeling.families import task_of

    return task_of(cfg) == "semantic"


def canvas_of(cfg: Any) -> tuple[int, int]:
    """The ``(H, W)`` the model is fed: a fixed canvas, K-Net's 800x1333 padded to 32, or a semantic
    model's training crop (ADE20K: 512x512, the issue's figure)."""
    if is_semantic(cfg):
        c = cfg.data.crop_size
        return (int(c[0]), int(c[1])) if isinstance(c, (list, tuple)) else (int(c), int(c))
    size = getattr(cfg.model, "image_size", None)
    if size:
        return int(size[0]), int(size[1])
    from kmax_deeplab.modeling.families import family_of

    geometry = family_of(cfg).input_geometry(cfg)
    h, w = geometry.test_size(800, 1333)
    div = getattr(geometry, "size_divisor", 1)
    return -(-h // div) * div, -(-w // div) * div


def synthetic_samples(batch: int, size: tuple[int, int], num_classes: int, g: torch.Generator,
                      semantic: bool = False) -> list[dict]:
    """Dataset-format samples (``image`` 0..255, ``masks``, ``labels``, ``is_crowd``, ``void``; with
    ``semantic`` the label map ``sem_seg`` instead, 255 outside the rectangles)."""
    h, w = size
    out = []
    for _ in range(batch):
        ids = torch.zeros(h, w, dtype=torch.int64)
        for k in range(1, 21):
            y0 = int(torch.randint(0, h - 64, (1,), generator=g))
            x0 = int(torch.randint(0, w - 64, (1,), generator=g))
            hh, ww = (int(v) for v in torch.randint(32, min(h, w) // 2, (2,), generator=g))
            ids[y0:y0 + hh, x0:x0 + ww] = k
        present = [k for k in range(1, 21) if (ids == k).any()]
        if semantic:
            lut = torch.cat([torch.tensor([255]), torch.randint(0, num_classes, (20,), generator=g)])
            out.append({"image": torch.rand(3, h, w, generator=g) * 255, "sem_seg": lut[ids]})
            continue
        out.append({"image": torch.rand(3, h, w, generator=g) * 255,
                    "masks": torch.stack([ids == k for k in present]),
                    "labels": torch.randint(0, num_classes, (len(present),), generator=g),
                    "is_crowd": torch.zeros(len(present), dtype=torch.bool),
                    "void": ids == 0})
    return out


def timed(fn, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn()`` on CUDA (synchronised) after ``warmup`` calls."""
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def check_correctness(preset: str, cfg: Any) -> str:
    """One Markdown row: CUDA vs CPU, fp32 (TF32 off), eval mode, same weights and input."""
    import kmax_deeplab

    torch.backends.cuda.matmul.allow_tf32 = False  # a pure-fp32 comparison
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = kmax_deeplab.build_model(cfg).eval()
    h, w = canvas_of(cfg)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)) * 255
    with torch.inference_mode():
        ref = model(x)
        got = model.to(DEVICE)(x.to(DEVICE))
    row = []
    keys, label_key = (("sem_seg",), "sem_seg") if is_semantic(cfg) else (("pred_logits", "pred_masks"), "pred_masks")
    for key in keys:
        a, b = ref[key].float(), got[key].float().cpu()
        row.append(f"{float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)):.1e}")
    if len(keys) == 1:
        row.insert(0, "-")  # no class logits: the per-pixel logits are the mask column
    agree = (ref[label_key].argmax(1) == got[label_key].cpu().argmax(1)).float().mean()
    row.append(f"{100 * float(agree):.3f} %")
    return f"| {preset} {h}x{w} | " + " | ".join(row) + " |"


def bench_inference(preset: str, cfg: Any, repeats: int, compile_too: bool = True) -> list[str]:
    """Markdown rows: bf16 autocast images/s at batch 1 and 8, eager and compiled."""
    import kmax_deeplab

    rows = []
    h, w = canvas_of(cfg)
    for compiled in ((False, True) if compile_too else (False,)):
        torch.manual_seed(0)
        model = kmax_deeplab.build_model(cfg).to(DEVICE).eval().to(memory_format=torch.channels_last)
        run = torch.compile(model) if compiled else model
        for bs in (1, 8):
            x = (torch.rand(bs, 3, h, w, device=DEVICE) * 255).contiguous(memory_format=torch.channels_last)

            def fwd():
                with torch.inference_mode(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
                    run(x)

            t = timed(fwd, repeats, 3 if compiled else 1)
            rows.append(f"| {preset} {h}x{w} | {bs} | {'yes' if compiled else 'no'} | {bs / t:.1f} |")
        del model, run
        torch.cuda.empty_cache()
    return rows


def bench_train_step(preset: str, cfg: Any, batch: int, steps: int) -> str:
    """One Markdown row: bf16 training step (family criterion + optimizer) images/s, peak memory."""
    from kmax_deeplab.engine.build import make_prepare_batch
    from kmax_deeplab.engine.trainer import _to_fp32, default_prepare_batch
    from kmax_deeplab.modeling.families import family_of

    family = family_of(cfg)
    torch.manual_seed(0)
    model = family.build_model(cfg).to(DEVICE).train()
    criterion = family.build_criterion(cfg)
    if isinstance(criterion, torch.nn.Module):
        criterion = criterion.to(DEVICE)
    optimizer = family.build_optimizer(model, cfg)
    size = getattr(cfg.data, "crop_size", None) or canvas_of(cfg)
    size = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    samples = synthetic_samples(batch, size, cfg.model.num_classes, torch.Generator().manual_seed(0),
                                semantic=is_semantic(cfg))
    collated = family.input_geometry(cfg).collate(cfg.model.num_classes)(samples)
    prepare = (default_prepare_batch if family.full_resolution_targets
               else make_prepare_batch(cfg.model.num_classes, family.mask_stride))
    images, targets = prepare(collated, DEVICE)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            out = model(images)
        loss = sum(criterion(_to_fp32(out), targets).values())  # as the Trainer: losses in fp32
        loss.backward()
        optimizer.step()

    step()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = timed(step, steps, 0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else float("nan")
    return f"| {preset} {images.shape[-2]}x{images.shape[-1]} | {batch} | {batch / t:.2f} | {peak:.1f} GiB |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    p.add_argument("--budget-s", type=float, default=420, help="stop starting new checks after this many seconds")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--device", default="cuda", help="cuda (the checks), or cpu for a smoke run of the script")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    p.add_argument("--sizes", default=None, metavar="key=value",
                   help="extra config overrides for every preset, e.g. model.image_size=[129,129] (smoke runs)")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device available", file=sys.stderr)
        return 2
    from kmax_deeplab.config import apply_overrides, get_preset

    start = time.perf_counter()
    print(f"{torch.cuda.get_device_name(0) if DEVICE.type == 'cuda' else 'CPU'}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    cfgs = {}
    for name in args.presets:
        try:
            cfgs[name] = apply_overrides(get_preset(name), [args.sizes] if args.sizes else [])
        except (KeyError, ValueError) as e:
            print(f"skipping {name}: {e}")
    sections = [
        ("CUDA vs CPU (fp32, TF32 off, eval)", "| preset | class logits rel | mask (semantic: pixel) logits rel | argmax agreement |",
         lambda n, c: [check_correctness(n, c)]),
        ("bf16 inference", "| preset | batch | compile | images/s |",
         lambda n, c: bench_inference(n, c, args.repeats, not args.no_compile)),
        ("bf16 training step", "| preset | batch | images/s | peak memory |",
         lambda n, c: [bench_train_step(n, c, args.train_batch, args.train_steps)]),
    ]
    failed = 0
    for title, header, fn in sections:
        print(f"\n### {title}\n\n{header}\n|" + "---|" * (header.count("|") - 1))
        for name, cfg in cfgs.items():
            if time.perf_counter() - start > args.budget_s:
                print(f"| {name} | (budget of {args.budget_s:.0f} s spent: not run) |")
                continue
            try:
                for row in fn(name, cfg):
                    print(row, flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on to the next check
                failed += 1
                print(f"| {name} | FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]} |", flush=True)
            torch.cuda.empty_cache()
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
