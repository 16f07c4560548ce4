"""Write ``tests/data/kmax_golden.json``: kMaX golden values (see ``tests/_kmax_golden.py``).

Recorded on the code of commit 752ffd4 (main before the issue-10 model-family refactor), so that
``tests/test_kmax_golden.py`` proves the refactor keeps kMaX bit-identical. Re-record only on
an intentional change of the numbers (say why in the commit), e.g.::

    PYTHONPATH=src python tools/record_kmax_golden.py [--only deeplab2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _kmax_golden import GOLDEN_FILE, REFERENCES, compute_golden  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", choices=REFERENCES, help="re-record one variant, keep the other")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        new = compute_golden(Path(tmp))
    old = json.loads(GOLDEN_FILE.read_text()) if GOLDEN_FILE.is_file() else {}
    data = dict(old)
    for ref in REFERENCES:
        if args.only is None or args.only == ref:
            data[ref] = new[ref]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    data.setdefault("_recorded_at", {})
    for ref in REFERENCES:
        if args.only is None or args.only == ref:
            data["_recorded_at"][ref] = commit
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
