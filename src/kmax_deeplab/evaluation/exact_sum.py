"""Order-independent float sums (Shewchuk's exact partials, as behind ``math.fsum``).

PQ sums one IoU per matched segment. Keeping the exact sum as non-overlapping
partials makes the result independent of image order, worker count and merge
order, so an in-memory evaluation fed in any order equals the file-based one bit
for bit (and equals panopticapi's sequential float sum to ~1e-16).
"""

from __future__ import annotations

import math
from typing import Iterable


def add_exact(partials: list[float], values: Iterable[float]) -> None:
    """Add ``values`` to the exact expansion ``partials`` in place."""
    for x in values:
        x = float(x)
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]


def exact_value(partials: list[float]) -> float:
    """The correctly rounded value of the expansion."""
    return math.fsum(partials)
