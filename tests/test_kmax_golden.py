"""kMaX stays bit-identical: outputs, losses, gradients and trained weights against recorded values.

The values in ``tests/data/kmax_golden.json`` were recorded by ``tools/record_kmax_golden.py`` on
the code before the model-family refactor (issue 10); see ``tests/_kmax_golden.py`` for what runs.
A mismatch names every differing entry and how far its sum moved.
"""

from __future__ import annotations

import json

import pytest

from _kmax_golden import GOLDEN_FILE, REFERENCES, compute_golden


def _diff(expected, got, path=""):
    if isinstance(expected, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(expected) | set(got)):
            if k not in got:
                out.append(f"{path}.{k}: missing")
            elif k not in expected:
                out.append(f"{path}.{k}: not recorded")
            else:
                out += _diff(expected[k], got[k], f"{path}.{k}")
        return out
    if expected != got:
        return [f"{path}: expected {expected!r}, got {got!r}"]
    return []


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    return compute_golden(tmp_path_factory.mktemp("golden"))


@pytest.mark.slow
@pytest.mark.parametrize("reference", REFERENCES)
def test_kmax_is_bit_identical_to_the_recorded_values(computed, reference):
    expected = json.loads(GOLDEN_FILE.read_text())[reference]
    problems = _diff(expected, computed[reference], reference)
    assert not problems, "kMaX numbers moved:\n" + "\n".join(problems[:30])
