"""Speed of the weight checks of issue 14 (``kmax_deeplab.checkpoints.checksums``).

CRC32C of a TF checkpoint (google-crc32c and the vectorised pure-Python fallback) and the
SHA-256 of a native ``model.safetensors``, on ``--mb`` megabytes of random bytes.

    PYTHONPATH=src python benchmarks/bench_checksums.py --mb 100
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mb", type=int, default=100, help="megabytes of random data")
    args = p.parse_args()
    from kmax_deeplab.checkpoints.checksums import _NATIVE, crc32c_python

    data = os.urandom(args.mb << 20)
    rows = []
    if _NATIVE is not None:
        t = time.perf_counter()
        _NATIVE(data, 0)
        rows.append(("crc32c google-crc32c", time.perf_counter() - t))
    t = time.perf_counter()
    crc32c_python(data)
    rows.append(("crc32c pure-Python fallback", time.perf_counter() - t))
    t = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    rows.append(("sha256 (hashlib)", time.perf_counter() - t))
    for name, sec in rows:
        print(f"{name:30s} {sec:7.3f} s per {args.mb} MB")


if __name__ == "__main__":
    main()
