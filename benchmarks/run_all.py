"""Run every benchmark of this folder in turn (``make bench``); print their reports.

Each script runs in its own process (``sys.executable``), with its defaults, or with
``--quick`` with small sizes that finish in a minute or two on a 2-core CPU (a smoke run: the
numbers are then not the ones to record). Results with the hardware and date belong in
``docs/benchmarks.md``. Exit status: 0 when every benchmark ran, else 1 (the failures are listed).

    PYTHONPATH=src python benchmarks/run_all.py [--quick] [--only bench_pq bench_data]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: script -> (arguments of the full run, arguments of --quick)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "bench_pq.py": ([], ["--num-images", "20", "--workers", "1", "--skip-reference"]),
    "bench_data.py": ([], ["--images", "4", "--workers", "0"]),
    "bench_inference.py": ([], ["--preset", "synthetic/kmax_tiny", "--sizes", "129", "--repeats", "1",
                                "--warmup", "0"]),
    "bench_train.py": ([], ["--preset", "synthetic/kmax_tiny", "--steps", "1"]),
    "bench_semantic.py": ([], ["--quick", "--sizes", "128x171"]),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: check that every benchmark runs")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these (e.g. bench_pq)")
    args = p.parse_args(argv)
    names = [n for n in BENCHMARKS if not args.only or n.removesuffix(".py") in
             {o.removesuffix(".py") for o in args.only}]
    if args.only and not names:
        p.error(f"--only: no such benchmark; available: {', '.join(n[:-3] for n in BENCHMARKS)}")
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    failed = []
    for name in names:
        extra = BENCHMARKS[name][1 if args.quick else 0]
        print(f"=== {name} {' '.join(extra)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / name), *extra], env=env)
        print(f"=== {name}: exit {code} after {time.perf_counter() - start:.0f} s\n", flush=True)
        if code:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
