"""Full-size export of kMaX R50 (``coco/kmax_r50``, random weights): export time, file size,
onnxruntime vs PyTorch latency, and the output difference, at each canvas in the same run.

For each size: torch.export (trace) once, ``.pt2`` saved from it, ONNX translated from the
same program (so "onnx s" excludes the shared trace); then ``repeats`` batch-1 forwards of one
real bundled photo (resized + padded by the Predictor's pre-processing), interleaved between
PyTorch (fp32, contiguous) and onnxruntime (CPU provider), medians reported, plus the max
absolute difference of pred_logits / pred_masks and whether the panoptic maps are equal.
No trained weights are reachable offline, so the weights are random (default init; speed does
not depend on them) and the thresholds are lowered (as in tests/test_export.py) so that the
compared panoptic maps have segments (their count is printed). Batch-norm statistics are not
randomised here: through the 50 layers of R50 that makes activations explode (~1e8) and the
absolute differences meaningless. Latencies: median wall and process-CPU seconds per batch-1
forward (pre-processing included), PyTorch and onnxruntime interleaved.

    PYTHONPATH=src python benchmarks/bench_export.py [--sizes 641 1281] [--repeats 3] [--threads 2]

Record results with the hardware and date in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


LOW_THRESHOLDS = ["postprocess.thing_threshold=0.0", "postprocess.stuff_threshold=0.0",
                  "postprocess.pixel_confidence_threshold=0.2", "postprocess.overlap_threshold=0.3"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="coco/kmax_r50")
    ap.add_argument("--sizes", type=int, nargs="+", default=[641, 1281])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for the exported files (default: temp)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    from kmax_deeplab.config import apply_overrides, get_preset
    from kmax_deeplab.engine.demo import coco_sample_images
    from kmax_deeplab.engine.export import _program, export_onnx, export_program, load_exported
    from kmax_deeplab.engine.predictor import Predictor, load_image

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, threads {args.threads}")
    print("| canvas | trace s | .pt2 MiB | onnx s | .onnx MiB | PyTorch wall / CPU s | "
          "onnxruntime wall / CPU s | max abs diff logits / masks (max abs value) | "
          "same panoptic (segments) |")
    print("|---|---|---|---|---|---|---|---|---|")
    photo = load_image(coco_sample_images()[0])
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="kmax_export_"))
    for size in args.sizes:
        cfg = apply_overrides(get_preset(args.preset),
                              [f"model.image_size=[{size},{size}]", *LOW_THRESHOLDS])
        torch.manual_seed(0)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ref = Predictor.from_config(cfg, channels_last=False)
        t = time.perf_counter()
        program = _program(ref.model, cfg, max_batch=8)
        trace_s = time.perf_counter() - t
        pt2 = export_program(None, cfg, out_dir / f"r50_{size}.pt2", program=program)
        t = time.perf_counter()
        onnx_file = export_onnx(None, cfg, out_dir / f"r50_{size}.onnx", program=program)
        onnx_s = time.perf_counter() - t
        ort = load_exported(onnx_file, threads=args.threads)
        times = {"torch": [], "ort": []}
        last = {}
        for _ in range(args.repeats + 1):  # first round is warm-up
            for name, pred in (("torch", ref), ("ort", ort)):
                t, c = time.perf_counter(), time.process_time()
                last[name] = pred.forward_batch([photo])
                times[name].append((time.perf_counter() - t, time.process_time() - c))
        raw_t, raw_o = last["torch"], last["ort"]
        dl = float((raw_t["pred_logits"] - raw_o["pred_logits"]).abs().max())
        dm = float((raw_t["pred_masks"] - raw_o["pred_masks"]).abs().max())
        ml = float(raw_t["pred_logits"].abs().max())
        mm = float(raw_t["pred_masks"].abs().max())
        sizes = [photo.shape[:2]]
        pan_t, pan_o = ref.postprocess(raw_t, sizes)[0], ort.postprocess(raw_o, sizes)[0]
        differ = int((pan_t["panoptic"] != pan_o["panoptic"]).sum())
        same = (f"{'yes' if differ == 0 else f'{differ} px differ'} "
                f"({len(pan_t['segments_info'])} vs {len(pan_o['segments_info'])})")
        med = {k: (statistics.median(w for w, _ in v[1:]), statistics.median(c for _, c in v[1:]))
               for k, v in times.items()}
        print(f"| {size}² | {trace_s:.0f} | {pt2.stat().st_size / 2**20:.0f} | {onnx_s:.0f} | "
              f"{onnx_file.stat().st_size / 2**20:.0f} | {med['torch'][0]:.2f} / {med['torch'][1]:.2f} | "
              f"{med['ort'][0]:.2f} / {med['ort'][1]:.2f} | {dl:.1e} / {dm:.1e} ({ml:.1f} / {mm:.1f}) | "
              f"{same} |", flush=True)
        del ort, ref, program


if __name__ == "__main__":
    main()
