"""Forward latency of MaX-DeepLab-S next to kMaX-DeepLab R50, in one process (random weights).

CPU (default): ``coco/max_deeplab_s_641`` and ``coco/kmax_r50`` with ``model.image_size``
641x641, fp32, batch 1, eval, ``torch.inference_mode``, channels_last (the ``Predictor``
default); the two models' forwards are interleaved so that load changes hit both alike.
Reports the median wall time and the median process CPU time (less sensitive to other jobs
on a shared machine). CUDA (``--cuda``): bf16 autocast images/s at batch 1 and 8.

    PYTHONPATH=src python benchmarks/bench_max_deeplab.py [--repeats 3] [--threads 2]
    PYTHONPATH=src python benchmarks/bench_max_deeplab.py --cuda

Record results with the hardware and date in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

MODELS = {"MaX-DeepLab-S": "coco/max_deeplab_s_641", "kMaX-DeepLab R50": "coco/kmax_r50"}


def build(preset: str, size: int, device: str) -> torch.nn.Module:
    from kmax_deeplab.config import load_config
    from kmax_deeplab.modeling.families import family_of

    cfg = load_config(preset, [f"model.image_size=[{size},{size}]", f"data.crop_size=[{size},{size}]"])
    model = family_of(cfg).build_model(cfg).to(device).eval()
    return model.to(memory_format=torch.channels_last)


def forward_times(model, images, n: int, autocast_dtype=None) -> list[tuple[float, float]]:
    """(wall s, process CPU s) of ``n`` forwards (CUDA: synchronised)."""
    out = []
    dev = images.device.type
    with torch.inference_mode(), torch.autocast(dev, dtype=autocast_dtype or torch.float32,
                                                enabled=autocast_dtype is not None):
        for _ in range(n):
            if dev == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            model(images)
            if dev == "cuda":
                torch.cuda.synchronize()
            out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def bench_cpu(args) -> None:
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    models = {name: build(preset, args.size, "cpu") for name, preset in MODELS.items()}
    images = (torch.rand(1, 3, args.size, args.size) * 255).contiguous(memory_format=torch.channels_last)
    runs = {name: [] for name in models}
    for name, m in models.items():
        forward_times(m, images, args.warmup)
    for _ in range(args.repeats):
        for name, m in models.items():
            runs[name] += forward_times(m, images, 1)
    for name, t in runs.items():
        wall, cpu = [w for w, _ in t], [c for _, c in t]
        n = sum(p.numel() for p in models[name].parameters())
        print(f"{name} ({MODELS[name]}, {n / 1e6:.1f} M params) {args.size}x{args.size} fp32 batch 1: "
              f"wall median {statistics.median(wall):.2f} s (min {min(wall):.2f}), "
              f"CPU time median {statistics.median(cpu):.2f} s, {len(t)} runs")


def bench_cuda(args) -> None:
    print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for name, preset in MODELS.items():
        model = build(preset, args.size, "cuda")
        for bs in (1, 8):
            images = (torch.rand(bs, 3, args.size, args.size, device="cuda") * 255).contiguous(
                memory_format=torch.channels_last)
            forward_times(model, images, args.warmup + 2, torch.bfloat16)
            t = [w for w, _ in forward_times(model, images, args.repeats, torch.bfloat16)]
            print(f"{name} {args.size}x{args.size} bf16 batch {bs}: {bs / statistics.median(t):.1f} images/s")
        del model
        torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=641)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cuda", action="store_true", help="bf16 images/s on the GPU")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--cuda: no CUDA device available")
        bench_cuda(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
