"""Record mmsegmentation 0.30's own mIoU on seeded label maps (a golden fixture).

Runs ``mmseg.core.evaluation.metrics.intersect_and_union`` / ``total_area_to_metrics``
(mmsegmentation 0.30.0 from PyPI; it imports mmcv 1.7.2, no compiled op is called)
on seeded random prediction / ground-truth maps: several images per case, different
sizes, class counts, ignore pixels, ``reduce_zero_label`` on and off, a ``label_map``,
GT values outside ``[0, K)`` and classes absent from both maps. Writes the inputs and
mmseg's outputs (per-class areas, IoU, Acc, aAcc and the ``nanmean`` summary of
``CustomDataset.evaluate``) to ``tests/data/semantic/mmseg_miou_golden.json``, which
``tests/test_eval_semseg.py`` compares :class:`kmax_deeplab.evaluation.semantic.SemSegAccumulator`
with.

Run OUTSIDE the repository's venv, with one that has mmcv 1.7.2 + mmsegmentation 0.30.0
(``/work/refs/venv-knet`` as ``../shared/specs/running_references.md`` describes, with a
stand-in ``mmcv._ext`` module, made here, and its stand-in ``torchvision`` holding only
``__version__`` on ``PYTHONPATH``)::

    PYTHONPATH=/path/to/torchvision-stub /path/to/venv-knet/bin/python tools/record_mmseg_miou.py

Recorded with mmsegmentation 0.30.0 (wheel ``mmsegmentation-0.30.0-py3-none-any.whl``).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "semantic" / "mmseg_miou_golden.json"

# (seed, num_classes, reduce_zero_label, label_map, number of images)
CASES = [
    (0, 5, False, {}, 3),
    (1, 12, False, {}, 2),
    (2, 8, True, {}, 3),
    (3, 150, True, {}, 2),
    (4, 6, False, {1: 2, 2: 5}, 2),
    (5, 7, True, {3: 0}, 2),
]


def _stub_mmcv_ext() -> None:
    ext = types.ModuleType("mmcv._ext")

    def _missing(name):
        raise AttributeError(name)

    ext.__getattr__ = _missing
    sys.modules["mmcv._ext"] = ext


def make_case(seed: int, k: int, reduce: bool, n: int):
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(6, 20, size=2))
        # Leave the top class out of both maps in some cases (absent -> NaN).
        hi = k - 1 if seed % 2 == 0 else k
        pred = rng.integers(0, hi, size=(h, w))
        if reduce:  # raw ADE20K-style GT: 0 = ignore, 1..K = classes
            label = rng.integers(0, hi + 1, size=(h, w))
        else:
            label = rng.integers(0, hi, size=(h, w))
            label[rng.random((h, w)) < 0.15] = 255
        label[rng.random((h, w)) < 0.03] = k + 3  # outside [0, K): counted in no class
        agree = rng.random((h, w)) < 0.4  # make IoUs non-trivial
        target = label - 1 if reduce else label
        ok = agree & (target >= 0) & (target < k)
        pred[ok] = target[ok]
        preds.append(pred.astype(np.int64))
        labels.append(label.astype(np.uint8))
    return preds, labels


def main() -> None:
    _stub_mmcv_ext()
    import warnings

    warnings.filterwarnings("ignore")
    import mmseg
    from mmseg.core.evaluation.metrics import intersect_and_union, total_area_to_metrics

    cases = []
    for seed, k, reduce, label_map, n in CASES:
        preds, labels = make_case(seed, k, reduce, n)
        totals = None
        for p, g in zip(preds, labels):
            # mmseg mutates the label in place: pass copies.
            areas = intersect_and_union(p.copy(), g.copy(), k, 255, label_map=dict(label_map),
                                        reduce_zero_label=reduce)
            totals = [a.double() for a in areas] if totals is None else [t + a.double() for t, a in zip(totals, areas)]
        m = total_area_to_metrics(*totals, metrics=["mIoU"])
        cases.append({
            "seed": seed, "num_classes": k, "reduce_zero_label": reduce,
            "label_map": {str(a): b for a, b in label_map.items()},
            "preds": [p.tolist() for p in preds], "labels": [g.tolist() for g in labels],
            "areas": [t.numpy().astype(np.int64).tolist() for t in totals],
            "IoU": [None if np.isnan(v) else float(v) for v in m["IoU"]],
            "Acc": [None if np.isnan(v) else float(v) for v in m["Acc"]],
            "aAcc": float(m["aAcc"]),
            "mIoU": float(np.nanmean(m["IoU"])), "mAcc": float(np.nanmean(m["Acc"])),
        })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"source": f"mmsegmentation {mmseg.__version__} "
                                         "mmseg/core/evaluation/metrics.py",
                               "ignore_index": 255, "cases": cases}, separators=(",", ":")))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
