"""Forward latency of kMaX-DeepLab (random weights; speed does not depend on them).

CPU (default): R50 with the ``coco/kmax_r50`` preset at 641x641 and 1281x1281, fp32, batch 1.
CUDA (``--cuda``): images/s in bf16 autocast at batch 1 and 8, with and without torch.compile.

    PYTHONPATH=src python benchmarks/bench_inference.py [--sizes 641 1281] [--repeats 3]
    PYTHONPATH=src python benchmarks/bench_inference.py --cuda [--sizes 1281]

Record results with the hardware and date in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def build(preset: str, size: int, device: str):
    from kmax_deeplab.config import apply_overrides, get_preset
    from kmax_deeplab.modeling.kmax import build_kmax

    cfg = apply_overrides(get_preset(preset), [f"model.image_size=[{size},{size}]"])
    return build_kmax(cfg.model).to(device).eval()


def time_forward(model, images, repeats: int, warmup: int, autocast_dtype=None) -> list[float]:
    device = images.device.type
    times = []
    with torch.inference_mode(), torch.autocast(device, dtype=autocast_dtype or torch.float32,
                                                enabled=autocast_dtype is not None):
        for i in range(warmup + repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(images)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


def bench_cpu(args) -> None:
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for size in args.sizes:
        model = build(args.preset, size, "cpu")
        images = torch.rand(1, 3, size, size) * 255
        t = time_forward(model, images, args.repeats, args.warmup)
        print(f"{args.preset} {size}x{size} fp32 batch 1: median {statistics.median(t):.2f} s "
              f"(min {min(t):.2f}, {len(t)} runs)")


def bench_cuda(args) -> None:
    print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for size in args.sizes:
        for compiled in (False, True):
            model = build(args.preset, size, "cuda")
            run = torch.compile(model) if compiled else model
            for bs in (1, 8):
                images = torch.rand(bs, 3, size, size, device="cuda") * 255
                t = time_forward(run, images, args.repeats, args.warmup + (3 if compiled else 0),
                                 autocast_dtype=torch.bfloat16)
                print(f"{args.preset} {size}x{size} bf16 batch {bs} compile={compiled}: "
                      f"{bs / statistics.median(t):.1f} images/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="coco/kmax_r50")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="canvas sides (32k+1); default 641 1281 on CPU, 1281 on CUDA")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cuda", action="store_true", help="bf16 images/s on the GPU")
    args = p.parse_args()
    if args.cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--cuda: no CUDA device available")
        args.sizes = args.sizes or [1281]
        bench_cuda(args)
    else:
        args.sizes = args.sizes or [641, 1281]
        bench_cpu(args)


if __name__ == "__main__":
    main()
