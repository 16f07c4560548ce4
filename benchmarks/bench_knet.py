"""Forward latency of K-Net R-50 next to kMaX-DeepLab R50, in the same process (random weights).

CPU (default): fp32, batch 1, K-Net ``coco/knet_r50_fpn_1x`` (panoptic, 3 stages) on an
800x1333 canvas (800x1344 after padding to 32) and kMaX ``coco/kmax_r50`` on its 1281x1281
canvas (``--kmax-size`` to change), the runs interleaved so that load changes hit both alike.
Reports the median wall time and the median process CPU time (less sensitive to other jobs).
CUDA (``--cuda``): bf16 autocast images/s at batch 1 and 8.

    PYTHONPATH=src python benchmarks/bench_knet.py [--repeats 3] [--threads 2] [--kmax-size 1281]
    PYTHONPATH=src python benchmarks/bench_knet.py --cuda

Record results with the hardware and date in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import torch

from bench_inference import time_forward, time_forward_cpu


def build_models(kmax_size: int, device: str):
    from kmax_deeplab.config import apply_overrides, get_preset
    from kmax_deeplab.modeling.families import family_of

    knet_cfg = get_preset("coco/knet_r50_fpn_1x")
    kmax_cfg = apply_overrides(get_preset("coco/kmax_r50"), [f"model.image_size=[{kmax_size},{kmax_size}]"])
    torch.manual_seed(0)
    return {
        "knet_r50 800x1333": (family_of(knet_cfg).build_model(knet_cfg).to(device).eval(), (800, 1333)),
        f"kmax_r50 {kmax_size}x{kmax_size}": (family_of(kmax_cfg).build_model(kmax_cfg).to(device).eval(),
                                              (kmax_size, kmax_size)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--kmax-size", type=int, default=1281)
    ap.add_argument("--cuda", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = "cuda" if a.cuda else "cpu"
    models = build_models(a.kmax_size, device)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}")
    if a.cuda:
        for name, (model, (h, w)) in models.items():
            for batch in (1, 8):
                x = torch.rand(batch, 3, h, w, device=device) * 255
                t = statistics.median(time_forward(model, x, a.repeats, a.warmup, torch.bfloat16))
                print(f"{name}  batch {batch}  bf16  {batch / t:.1f} images/s")
        return
    results = {name: [] for name in models}
    inputs = {name: torch.rand(1, 3, h, w) * 255 for name, (_, (h, w)) in models.items()}
    for _ in range(a.repeats):  # interleave the models
        for name, (model, _) in models.items():
            results[name] += time_forward_cpu(model, inputs[name], 1, a.warmup)
    for name, times in results.items():
        wall = statistics.median(t for t, _ in times)
        cpu = statistics.median(c for _, c in times)
        print(f"{name}  fp32 batch 1  wall {wall:.2f} s  cpu {cpu:.2f} s  (median of {len(times)})")


if __name__ == "__main__":
    main()
