"""Forward latency of kMaX-DeepLab (random weights; speed does not depend on them).

CPU (default): R50 with the ``coco/kmax_r50`` preset at 641x641 and 1281x1281, fp32, batch 1,
in the same process for each memory format (``--formats``: contiguous NCHW and channels_last,
the runs interleaved so that load changes hit both alike). Reports the median wall time
and the median process CPU time (less sensitive to other jobs on a shared machine).
CUDA (``--cuda``): images/s in bf16 autocast at batch 1 and 8, with and without torch.compile.

    PYTHONPATH=src python benchmarks/bench_inference.py [--sizes 641 1281] [--repeats 3] [--threads 1]
    PYTHONPATH=src python benchmarks/bench_inference.py --cuda [--sizes 1281] [--formats channels_last]

Record results with the hardware and date in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def build(preset: str, size: int, device: str):
    from kmax_deeplab.config import apply_overrides, get_preset
    from kmax_deeplab.modeling.kmax import build_kmax

    cfg = apply_overrides(get_preset(preset), [f"model.image_size=[{size},{size}]"])
    return build_kmax(cfg.model).to(device).eval()


FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def time_forward(model, images, repeats: int, warmup: int, autocast_dtype=None) -> list[float]:
    """Wall seconds per forward (CUDA: synchronised before and after each call)."""
    return [w for w, _ in time_forward_cpu(model, images, repeats, warmup, autocast_dtype)]


def time_forward_cpu(model, images, repeats: int, warmup: int, autocast_dtype=None) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) per forward after ``warmup`` calls."""
    device = images.device.type
    times = []
    with torch.inference_mode(), torch.autocast(device, dtype=autocast_dtype or torch.float32,
                                                enabled=autocast_dtype is not None):
        for i in range(warmup + repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            model(images)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def bench_cpu(args) -> None:
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for size in args.sizes:
        model = build(args.preset, size, "cpu")
        images = torch.rand(1, 3, size, size) * 255
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in args.formats}
        with torch.inference_mode():  # warm every variant once, then interleave the timed runs
            for name in args.formats:
                fmt = FORMATS[name]
                model.to(memory_format=fmt)
                for _ in range(args.warmup):
                    model(images.contiguous(memory_format=fmt))
        for _ in range(args.repeats):
            for name in args.formats:
                fmt = FORMATS[name]
                model.to(memory_format=fmt)
                runs[name] += time_forward_cpu(model, images.contiguous(memory_format=fmt), 1, 0)
        for name, t in runs.items():
            wall, cpu = [w for w, _ in t], [c for _, c in t]
            print(f"{args.preset} {size}x{size} fp32 batch 1 {name}: wall median {statistics.median(wall):.2f} s "
                  f"(min {min(wall):.2f}), CPU time median {statistics.median(cpu):.2f} s, {len(t)} runs")


def bench_cuda(args) -> None:
    print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for size in args.sizes:
        for compiled in (False, True):
            for name in args.formats:
                fmt = FORMATS[name]
                model = build(args.preset, size, "cuda").to(memory_format=fmt)
                run = torch.compile(model) if compiled else model
                for bs in (1, 8):
                    images = (torch.rand(bs, 3, size, size, device="cuda") * 255).contiguous(memory_format=fmt)
                    t = time_forward(run, images, args.repeats, args.warmup + (3 if compiled else 0),
                                     autocast_dtype=torch.bfloat16)
                    print(f"{args.preset} {size}x{size} bf16 batch {bs} compile={compiled} {name}: "
                          f"{bs / statistics.median(t):.1f} images/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="coco/kmax_r50")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="canvas sides (32k+1); default 641 1281 on CPU, 1281 on CUDA")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cuda", action="store_true", help="bf16 images/s on the GPU")
    p.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=None,
                   help="memory formats to compare in one process (model and input converted); "
                        "default: contiguous channels_last on CPU, channels_last on CUDA")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; on a CPU shared with other jobs 1 thread avoids "
                        "OpenMP threads waiting on descheduled peers")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--cuda: no CUDA device available")
        args.sizes = args.sizes or [1281]
        args.formats = args.formats or ["channels_last"]
        bench_cuda(args)
    else:
        args.sizes = args.sizes or [641, 1281]
        args.formats = args.formats or ["contiguous", "channels_last"]
        bench_cpu(args)


if __name__ == "__main__":
    main()
