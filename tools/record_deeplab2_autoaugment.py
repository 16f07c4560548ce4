#!/usr/bin/env python
"""Record deeplab2's AutoAugment operations on small seeded images (golden for tests/test_autoaugment.py).

Reference: google-research/deeplab2 @64bc1c1 ``data/preprocessing/autoaugment_utils.py``
(``NAME_TO_FUNC`` with ``level_to_arg``) and ``autoaugment_policy.py`` (``available_policies``),
TensorFlow 2.21 CPU. For every (operation, magnitude) of both available policies, and for
AutoContrast / Invert, the uint8 output on three seeded images: full range 24x20, a
low-contrast 40x70 (values 60..120) and a 3x5 strip. Also records the decoded policies.

Run: PYTHONPATH=/work/refs/deeplab2/src /work/refs/venv-tf/bin/python tools/record_deeplab2_autoaugment.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "deeplab2_autoaugment_golden.npz"


def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    return {"full": rng.integers(0, 256, (24, 20, 3), dtype=np.uint8),
            "low": rng.integers(60, 121, (20, 30, 3), dtype=np.uint8),
            "strip": rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)}


def main() -> None:
    from deeplab2.data.preprocessing import autoaugment_policy, autoaugment_utils

    pairs = {("AutoContrast", 0.0), ("Invert", 0.0)}
    for policy in autoaugment_policy.available_policies.values():
        for sub in policy:
            for name, _, magnitude in sub:
                pairs.add((name, float(magnitude)))
    record = {"policies": np.array(json.dumps(autoaugment_policy.available_policies))}
    for key, img in images().items():
        record[f"input/{key}"] = img
        for name, magnitude in sorted(pairs):
            args = autoaugment_utils.level_to_arg()[name](magnitude)
            out = autoaugment_utils.NAME_TO_FUNC[name](tf.constant(img), *args)
            record[f"{name}/{magnitude:g}/{key}"] = out.numpy().astype(np.uint8)
    np.savez_compressed(OUT, **record)
    print("wrote", OUT, OUT.stat().st_size, "bytes,", len(pairs), "operations")


if __name__ == "__main__":
    main()
