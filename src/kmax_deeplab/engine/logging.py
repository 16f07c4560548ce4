"""Training logs: console (``logging``), ``metrics.jsonl`` and TensorBoard (if installed).

Only rank 0 writes; other ranks get a :class:`MetricWriter` with ``enabled=False``.
Each JSON line is ``{"iteration": int, "time": unix seconds, <name>: float, ...}``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger("kmax_deeplab.train")


def setup_console_logging(level: int = logging.INFO) -> None:
    """Attach one stream handler to the ``kmax_deeplab`` logger (idempotent)."""
    root = logging.getLogger("kmax_deeplab")
    if not any(getattr(h, "_kmax", False) for h in root.handlers):
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S"))
        h._kmax = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)


class MetricWriter:
    """Append scalars to ``output_dir/metrics.jsonl`` and TensorBoard event files.

    Args:
        output_dir: run folder.
        enabled: False on non-zero ranks (every call is a no-op).
        tensorboard: try to open a ``SummaryWriter`` in ``output_dir/tb``.
    """

    def __init__(self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tb"))
            except Exception as e:  # tensorboard missing or broken: JSON lines still work
                logger.info("TensorBoard logging off (%s)", e)

    def write(self, iteration: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        """Record ``scalars`` at ``iteration`` (names get ``prefix``, e.g. ``"val/"``)."""
        if not self.enabled:
            return
        record = {"iteration": int(iteration), "time": round(time.time(), 3)}
        record.update({f"{prefix}{k}": float(v) for k, v in scalars.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{prefix}{k}", float(v), iteration)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file back as a list of dicts."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
