"""Semantic inference latency: K-Net R-50-D8 UPerNet, whole image vs sliding window, same run.

The model is ``ade20k/knet_r50_d8_upernet_512`` (ResNetV1c-50 at output stride 32, UPerNet, 3
kernel update stages, 150 classes; random weights, BN instead of the configs' SyncBN, eval, no
auxiliary head at test time), run through
:func:`kmax_deeplab.engine.semantic_inference.semantic_inference` exactly as ``kmax predict --task
semantic`` runs it. Each ``--sizes`` entry ``HxW`` is fed at its size (no resize is timed); the
defaults are at ADE20K's 2048x512 test scale (512x512, and a 480x640 photo's 512x683). Modes:
``whole`` (one forward of the image) and ``slide`` (mmseg's 512x512 windows every 341 pixels:
1 window at 512x512, 2 at 512x683), interleaved so that load changes hit both alike. Reports the
median wall time and the median process CPU time (steadier on a shared machine), and the
slide / whole ratio of each.

    PYTHONPATH=src python benchmarks/bench_semantic.py [--repeats 3] [--threads 2] [--sizes 512x512 512x683]
    PYTHONPATH=src python benchmarks/bench_semantic.py --quick   # tiny backbone, smoke run
    PYTHONPATH=src python benchmarks/bench_semantic.py --device cuda --dtype bf16

Record results with the hardware and date in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

TINY = ["model.backbone=resnet_tiny", "model.head_channels=32", "model.updator_dim=16", "model.ffn_dim=32",
        "model.num_heads=2", "model.aux_channels=16"]


def build(preset: str, quick: bool, device: str):
    from kmax_deeplab.config import load_config
    from kmax_deeplab.modeling.families import family_of

    cfg = load_config(preset, ["model.norm=BN"] + (TINY if quick else []))
    torch.manual_seed(0)
    model = family_of(cfg).build_model(cfg).to(device).eval()
    return cfg, model


def main() -> None:
    from kmax_deeplab.engine.semantic_inference import SemanticTestConfig, semantic_inference

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ade20k/knet_r50_d8_upernet_512")
    ap.add_argument("--sizes", nargs="+", default=["512x512", "512x683"], metavar="HxW")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--quick", action="store_true", help="tiny backbone and head, one repeat (smoke run)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.repeats, a.warmup = 1, 0
    device = torch.device(a.device)
    cfg, model = build(a.preset, a.quick, a.device)
    params = sum(p.numel() for p in model.parameters())
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}, {a.dtype}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# {a.preset}{' (tiny: --quick)' if a.quick else ''}: {params:,} parameters (eval forward skips the "
          f"auxiliary head)")
    # img_scale=None: the image is fed at its size (512x512 and 512x683 are also fixed points of
    # ADE20K's 2048x512 keep-ratio rule, so this is what the test pipeline feeds for them)
    modes = {"whole": SemanticTestConfig(mode="whole", img_scale=None),
             "slide": SemanticTestConfig(mode="slide", crop_size=(512, 512), stride=(341, 341), img_scale=None)}
    dtype = torch.bfloat16 if a.dtype == "bf16" else None
    calls = {"n": 0}

    def model_fn(x):
        calls["n"] += 1
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x.to(device))["sem_seg"].float()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rng = np.random.default_rng(0)
    for size in a.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        windows = {}
        with torch.inference_mode():
            for i in range(a.warmup + a.repeats):
                for mode, test in modes.items():  # interleaved
                    calls["n"] = 0
                    sync()
                    t0, c0 = time.perf_counter(), time.process_time()
                    semantic_inference(model_fn, image, test)
                    sync()
                    if i >= a.warmup:
                        times[mode].append((time.perf_counter() - t0, time.process_time() - c0))
                    windows[mode] = calls["n"]
        med = {m: (statistics.median(t for t, _ in v), statistics.median(c for _, c in v)) for m, v in times.items()}
        for mode in modes:
            wall, cpu = med[mode]
            print(f"{h}x{w}  {mode:<5}  forwards {windows[mode]}  wall {wall:.2f} s  cpu {cpu:.2f} s  "
                  f"(median of {len(times[mode])})")
        print(f"{h}x{w}  slide / whole  wall {med['slide'][0] / med['whole'][0]:.2f}x  "
              f"cpu {med['slide'][1] / med['whole'][1]:.2f}x")


if __name__ == "__main__":
    main()
