"""Benchmark: PQ evaluation of synthetic 1024x2048 GT/prediction PNG pairs in one run,
on the same files: panopticapi-lite (the official code), ours from files
(``backend="kmax"``), hotcoco (``backend="hotcoco"``, the default of ``kmax evaluate``)
and ours in memory (``PanopticEvaluator.update`` on decoded id maps, as in training
validation and ``kmax predict --evaluate``: no PNG involved).

Each GT has ~30-60 segments (Voronoi cells with jittered boundaries, random 24-bit
ids, ~1/3 stuff, a few crowd and VOID cells); the prediction is the GT shifted, with
some cells relabelled, merged, dropped or split. panopticapi uses a Pool over all CPUs,
ours ``num_workers`` processes, hotcoco its own Rust threads (all CPUs). The in-memory
path runs in this one process; only ``update`` is timed (the maps are decoded before,
untimed, one pair at a time so that 500 pairs need no 8 GB of RAM). Ours uses the
``[fast]`` extra (libdeflate, libspng) when installed.

    python benchmarks/bench_pq.py --num-images 100 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 1024, 2048
CATS = [{"id": i, "name": f"c{i}", "isthing": int(i <= 8)} for i in range(1, 17)]


def _voronoi(rng, n):
    # Cells on a 256x512 grid with jittered coordinates, upsampled x4 -> [1024, 2048].
    gy, gx = np.mgrid[0:256, 0:512].astype(np.float32)
    gy += rng.normal(0, 1.5, gy.shape).astype(np.float32)
    gx += rng.normal(0, 1.5, gx.shape).astype(np.float32)
    sy, sx = rng.uniform(0, 256, n), rng.uniform(0, 512, n)
    best = np.full(gy.shape, np.inf, np.float32)
    lab = np.zeros(gy.shape, np.int32)
    for k in range(n):
        d = (gy - sy[k]) ** 2 + (gx - sx[k]) ** 2
        m = d < best
        best[m], lab[m] = d[m], k
    return np.repeat(np.repeat(lab, 4, axis=0), 4, axis=1)


def _to_rgb(ids):
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)


def make_pair(rng):
    n = int(rng.integers(30, 61))
    cells = _voronoi(rng, n)
    ids = rng.choice(np.arange(1, 1 << 24), n, replace=False)
    cats = rng.integers(1, 17, n)
    crowd = (cats <= 8) & (rng.random(n) < 0.05)
    void = rng.random(n) < 0.05
    gt = np.where(void[cells], 0, ids[cells]).astype(np.uint32)
    gt_info = [{"id": int(ids[k]), "category_id": int(cats[k]), "iscrowd": int(crowd[k]),
                "area": int((cells == k).sum())} for k in range(n) if not void[k]]
    pcells = np.roll(cells, (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), axis=(0, 1))
    pcats = np.where(rng.random(n) < 0.1, rng.integers(1, 17, n), cats)
    pids = rng.choice(np.arange(1, 1 << 24), n + 1, replace=False)
    merge = rng.random(n) < 0.05
    target = np.where(merge, np.roll(np.arange(n), 1), np.arange(n))
    pred = pids[target[pcells]].astype(np.uint32)
    pred[(rng.random(n) < 0.05)[pcells]] = 0  # dropped cells
    split = pcells == int(rng.integers(n))
    pred[split & (np.arange(W)[None, :] % 512 < 256)] = pids[n]
    present = set(np.unique(pred).tolist()) - {0}
    pcat_of = {int(pids[k]): int(pcats[k]) for k in range(n)}
    pcat_of[int(pids[n])] = int(rng.integers(1, 17))
    pred_info = [{"id": i, "category_id": pcat_of[i]} for i in sorted(present)]
    return gt, gt_info, pred, pred_info


def write_dataset(root: Path, num: int, seed: int):
    rng = np.random.default_rng(seed)
    (root / "gt").mkdir()
    (root / "pred").mkdir()
    gt_anns, pred_anns = [], []
    for i in range(num):
        gt, gi, pred, pi = make_pair(rng)
        name = f"{i:05d}.png"
        Image.fromarray(_to_rgb(gt)).save(root / "gt" / name)
        Image.fromarray(_to_rgb(pred)).save(root / "pred" / name)
        gt_anns.append({"image_id": i, "file_name": name, "segments_info": gi})
        pred_anns.append({"image_id": i, "file_name": name, "segments_info": pi})
    (root / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": CATS}))
    (root / "pred.json").write_text(json.dumps({"annotations": pred_anns}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-images", type=int, default=500, help="GT/prediction pairs (issue target: 500)")
    ap.add_argument("--workers", type=int, default=2, help="our worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true", help="do not run panopticapi-lite")
    args = ap.parse_args()

    from kmax_deeplab.evaluation import PanopticEvaluator, evaluate_files, pq_compute
    from kmax_deeplab.evaluation.panoptic_io import read_panoptic_png

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_dataset(root, args.num_images, args.seed)
        print(f"wrote {args.num_images} pairs of {H}x{W} PNGs in {time.perf_counter() - t0:.1f} s")
        files = (root / "gt.json", root / "pred.json", root / "gt", root / "pred")
        results = {}
        t0 = time.perf_counter()
        ours = pq_compute(*map(str, files), num_workers=args.workers, progress=False, backend="kmax")
        t_ours = time.perf_counter() - t0
        results["kmax files"] = ours
        print(f"kmax_deeplab pq_compute backend=kmax ({args.workers} workers): {t_ours:.2f} s "
              f"({1000 * t_ours / args.num_images:.1f} ms/pair), PQ {100 * ours['All']['pq']:.3f}")
        t0 = time.perf_counter()
        hot = evaluate_files(*map(str, files), num_workers=args.workers, progress=False,
                             backend="hotcoco")
        t_hot = time.perf_counter() - t0
        assert hot["backend"] == "hotcoco", "hotcoco is not installed or refused the input"
        results["hotcoco files"] = hot["panoptic"]
        print(f"kmax_deeplab pq_compute backend=hotcoco (hotcoco {_version('hotcoco')}, its own "
              f"threads): {t_hot:.2f} s ({1000 * t_hot / args.num_images:.1f} ms/pair), "
              f"PQ {100 * hot['panoptic']['All']['pq']:.3f}; {t_ours / t_hot:.2f}x ours from files")
        gt_json = json.loads(files[0].read_text())
        pred_anns = {a["image_id"]: a for a in json.loads(files[1].read_text())["annotations"]}
        ev = PanopticEvaluator(gt_json["categories"])
        t_mem = 0.0
        for g in gt_json["annotations"]:
            p = pred_anns[g["image_id"]]
            gt_ids = read_panoptic_png(files[2] / g["file_name"])
            pred_ids = read_panoptic_png(files[3] / p["file_name"])
            t0 = time.perf_counter()
            ev.update(gt_ids, g["segments_info"], pred_ids, p["segments_info"], image_id=g["image_id"])
            t_mem += time.perf_counter() - t0
        mem = ev.compute()["panoptic"]
        results["kmax in memory"] = mem
        print(f"kmax_deeplab PanopticEvaluator.update in memory (1 process): {t_mem:.2f} s "
              f"({1000 * t_mem / args.num_images:.1f} ms/pair), PQ {100 * mem['All']['pq']:.3f}; "
              f"{t_hot / t_mem:.2f}x hotcoco from files")
        if not args.skip_reference:
            from panopticapi.evaluation import pq_compute as ref_compute

            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                ref = ref_compute(*map(str, files))
            t_ref = time.perf_counter() - t0
            print(f"panopticapi-lite pq_compute ({os.cpu_count()} processes): {t_ref:.2f} s "
                  f"({1000 * t_ref / args.num_images:.1f} ms/pair), PQ {100 * ref['All']['pq']:.3f}")
            results["panopticapi"] = ref
            print(f"speedup over panopticapi: ours from files {t_ref / t_ours:.2f}x, hotcoco "
                  f"(default of kmax evaluate) {t_ref / t_hot:.2f}x, in memory {t_ref / t_mem:.2f}x")
        base_name, base = next(iter(results.items()))
        for name, r in results.items():
            diff = max(abs(r[g][k] - base[g][k]) for g in ("All", "Things", "Stuff") for k in ("pq", "sq", "rq"))
            pc = max(abs(r["per_class"][c][k] - base["per_class"][c][k])
                     for c in base["per_class"] for k in ("pq", "sq", "rq"))
            print(f"max |{name} - {base_name}|: All/Things/Stuff PQ/SQ/RQ {diff:.2e}, per class {pc:.2e}")
            if max(diff, pc) > 1e-12:
                raise SystemExit(f"{name} and {base_name} disagree by {max(diff, pc):.2e}")
    print(f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, Pillow {_version('pillow')}, deflate (libdeflate) "
          f"{_version('deflate')}, pyspng (libspng) {_version('pyspng')}")


def _version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
